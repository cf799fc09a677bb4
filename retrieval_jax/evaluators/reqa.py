"""The `reqa` evaluator: ReQA SQuAD sentence retrieval, Recall@1/5/10/50/100 and MRR.

The protocol is google/retrieval-qa-eval's `squad_eval.py` (data rules: `retrieval_jax.data.reqa`):
every unique question text of the evaluated articles is ranked against the candidate pool (every
(sentence, context) candidate of the file, or only the test articles'), and scores its best-ranked
gold candidate. Metrics go through pytrec_eval (`retrieval_jax.metrics`) on the top-`depth` run:

  * `recall@k` is trec_eval's `success_k`: the share of questions with a gold candidate among
    their k best, which is the script's `recall_at_n` (share of questions whose best gold rank
    is <= n);
  * `mrr` is trec_eval's `recip_rank`: 1 / the best gold rank, as the script's `mrr`, except that
    a question with no gold candidate in its top `depth` scores 0 where the script adds
    1 / its rank (< 1 / depth), and that tied scores are ordered as trec_eval orders them (by
    candidate id) where the script gives them scipy's average rank. Without ties and with
    `depth` covering the pool, both equal the script's numbers (tests/test_reqa_evaluator.py).

Entry keys (`configs/common.reqa_eval`): `data` {path, split, train_fraction, seed, candidates,
max_questions}, `index` (exact | bm25), `depth`, `max_length` (candidate tokens),
`query_max_length`, `batch_size`, `progress`, `bm25` {k1, b}. `exact` needs the `query` and
`passage` models; `bm25` none. Writes `metrics.json`, `run.trec` and `eval_info.json`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from etils import epath
import jax

from retrieval_jax import evaluation, files, metrics, run_config
from retrieval_jax.data import reqa
from retrieval_jax.data.beir import BeirData

logger = logging.getLogger(__name__)

RECALL_CUTOFFS = (1, 5, 10, 50, 100)
INDEXES = ("exact", "bm25")
# pytrec_eval names of the metrics and the names metrics.json gives them.
TREC_NAMES = {**{f"success@{k}": f"recall@{k}" for k in RECALL_CUTOFFS}, "mrr": "mrr"}


def reqa_metrics(qrels: dict, run: dict) -> dict[str, float]:
  """`recall@k` (k in RECALL_CUTOFFS) and `mrr` of a run, through pytrec_eval."""
  return _renamed(metrics.evaluate(qrels, run, tuple(TREC_NAMES)))


def _renamed(values: dict[str, float]) -> dict[str, float]:
  return {TREC_NAMES[name]: value for name, value in values.items()}


def _data_fields(name: str, entry: Any) -> dict:
  """The entry's `data` with defaults, checked; errors name `evals.<name>.data.<key>`."""
  data = {"path": "squad", "split": "train", "train_fraction": None, "seed": 0,
          "candidates": "all", "max_questions": None}
  given = dict(entry.get("data") or {})
  unknown = sorted(set(given) - set(data))
  if unknown:
    raise ValueError(f"evals.{name}.data has unknown keys {unknown}; known: {sorted(data)}")
  data.update({key: value for key, value in given.items() if value is not None})
  if data["split"] not in reqa.SPLIT_FILES:
    raise ValueError(f"evals.{name}.data.split={data['split']!r} is not one of "
                     f"{sorted(reqa.SPLIT_FILES)}")
  if data["candidates"] not in reqa.CANDIDATE_POOLS:
    raise ValueError(f"evals.{name}.data.candidates={data['candidates']!r} is not one of "
                     f"{reqa.CANDIDATE_POOLS}")
  fraction = data["train_fraction"]
  if fraction is not None and not 0.0 < fraction < 1.0:
    raise ValueError(f"evals.{name}.data.train_fraction={fraction} is not in (0, 1) (None: "
                     "evaluate every question)")
  if data["max_questions"] is not None and data["max_questions"] < 1:
    raise ValueError(f"evals.{name}.data.max_questions={data['max_questions']} is below 1")
  return data


def settings(name: str, entry: Any) -> evaluation.EvalSettings:
  """The search settings of an entry; errors name `evals.<name>.<key>`."""
  if entry.get("index") not in INDEXES:
    raise ValueError(f"evals.{name}.index={entry.get('index')!r} is not one of {INDEXES}")
  depth = entry.get("depth", 100)
  if depth < max(RECALL_CUTOFFS):
    raise ValueError(f"evals.{name}.depth={depth} is below {max(RECALL_CUTOFFS)}, the largest "
                     "recall cut-off")
  bm25 = entry.get("bm25") or {}
  return evaluation.EvalSettings(
      index=entry.index, depth=depth, metrics=tuple(TREC_NAMES),
      max_length=entry.get("max_length", 256), query_max_length=entry.get("query_max_length"),
      batch_size=entry.get("batch_size", 128), bm25_k1=bm25.get("k1", 0.9),
      bm25_b=bm25.get("b", 0.4), progress=entry.get("progress", True))


class ReqaEvaluator:
  """Ranks the evaluated questions against the candidate pool; data read once, kept."""

  def __init__(self, name: str, entry: Any, defaults: Any = None):
    del defaults  # The run's `config.data` is a BEIR set; ReQA names its own file.
    self.name = name
    self.data_config = _data_fields(name, entry)
    try:
      self.settings = settings(name, entry)
    except ValueError as error:  # EvalSettings' own checks name no entry
      raise ValueError(str(error) if str(error).startswith("evals.")
                       else f"evals.{name}: {error}") from None
    self.requires = () if self.settings.index == "bm25" else ("query", "passage")
    self._eval_set: reqa.EvalSet | None = None

  @property
  def eval_set(self) -> reqa.EvalSet:
    """The questions and candidates ranked, built on first use."""
    if self._eval_set is None:
      config = self.data_config
      start = time.perf_counter()
      with run_config.input_errors():  # a missing file is the user's input, read lazily
        data = reqa.load_reqa(config["path"], config["split"])
      test = None
      if config["train_fraction"] is not None:
        _, test = reqa.split_by_article(data.num_articles, config["train_fraction"],
                                        config["seed"])
      self._eval_set = data.evaluation_set(test, candidates=config["candidates"],
                                           max_questions=config["max_questions"],
                                           seed=config["seed"])
      logger.info("evals.%s: ReQA %s/%s, %d questions against %d candidates (%.1f s)",
                  self.name, config["path"], config["split"], len(self._eval_set.query_ids),
                  len(self._eval_set.candidate_ids), time.perf_counter() - start)
    return self._eval_set

  def beir_data(self) -> BeirData:
    """The evaluation set in the layout `evaluation.evaluate_retrieval` searches."""
    found = self.eval_set
    config = self.data_config
    return BeirData(name=f"reqa:{config['path']}/{config['split']}",
                    corpus_ids=found.candidate_ids, corpus_titles=[""] * len(found.documents),
                    corpus_texts=found.documents, query_ids=found.query_ids,
                    query_texts=found.query_texts, qrels=found.qrels)

  def run(self, models: Any, out_dir: epath.Path | None) -> dict[str, float]:
    data = self.beir_data()
    # Search only; the files are written below with ReQA's metric names.
    result = evaluation.evaluate_retrieval(data, self.settings, models.get("passage"), None,
                                           query_encoder=models.get("query"))
    values = _renamed(result.metrics)
    values.update(questions=len(data.query_ids), candidates=len(data.corpus_ids))
    if out_dir is not None and jax.process_index() == 0:
      out_dir = files.as_path(out_dir)
      out_dir.mkdir(parents=True, exist_ok=True)
      search = dataclasses.asdict(self.settings)
      search["metrics"] = list(self.settings.metrics)
      evaluation.write_results(out_dir, data, result.run, values,
                               settings={"data": self.data_config, **search},
                               timings=result.timings)
    return values


def build(name: str, entry: Any, defaults: Any = None) -> ReqaEvaluator:
  return ReqaEvaluator(name, entry, defaults)
