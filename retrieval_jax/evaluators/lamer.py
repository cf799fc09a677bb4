"""The `lamer` evaluator: LameR (BM25 → LLM answers → augmented BM25) and HyDE.

`mode: lamer` (Shen et al. 2023): BM25 retrieves each query's top `candidates` (M); the
generator (role `generator`, a `generation.backend.Backend`) answers a prompt of the query
and those candidates `answers` (N) times; the query augmented with its answers
(`generation.expansion.augmented_query`, `augment`) is searched with BM25 again.
`mode: hyde` (Gao et al. 2022): N passages are written from the query alone, embedded with
the `query` role's encoder and averaged with the query's embedding; exact dense search.

Both score the plain BM25 run on the same queries and report the paired difference of the
first metric against it (`vs_bm25/...`, a 95% bootstrap interval). Every prompt and answer is
saved in `generations.jsonl` beside `metrics.json`, `run.trec` and `bm25_run.trec`.

Entry keys (all optional but `type`): `data` ({name, split}, as `retrieval`), `mode`
(`lamer`), `prompt` (`generation.expansion`'s LameR instruction or HyDE template; None: the
first), `candidates` (10), `answers` (5), `augment` (`interleave`), `max_passage_words` (128),
`depth` (1000), `metrics`, `bm25` ({k1 0.9, b 0.4}), `sampling` (`generation.backend.Sampling`
fields but `n`), `max_length` and `batch_size` (HyDE's encoder), `progress`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from etils import epath
import jax
import numpy as np
import tqdm

from retrieval_jax import encode, evaluation, files, metrics
from retrieval_jax.evaluators.retrieval import SplitEvaluator
from retrieval_jax.generation import expansion
from retrieval_jax.generation.backend import Sampling
from retrieval_jax.index.bm25 import BM25Index
from retrieval_jax.index.exact import exact_search

logger = logging.getLogger(__name__)

MODES = ("lamer", "hyde")
DEFAULTS = {"data": None, "mode": "lamer", "prompt": None, "candidates": 10, "answers": 5,
            "augment": "interleave",
            "max_passage_words": 128, "depth": 1000, "metrics": evaluation.EvalSettings().metrics,
            "bm25": {"k1": 0.9, "b": 0.4}, "sampling": {}, "max_length": 256,
            "batch_size": 64, "progress": True}


@dataclasses.dataclass(frozen=True)
class LamerSettings:
  mode: str
  prompt: str
  candidates: int
  answers: int
  augment: str
  max_passage_words: int
  depth: int
  metrics: tuple[str, ...]
  k1: float
  b: float
  sampling: Sampling
  max_length: int
  batch_size: int
  progress: bool


def parse(entry: Any) -> LamerSettings:
  """Settings from an entry; a ValueError names the key (its caller adds `evals.<name>.`)."""
  given = {k: entry.get(k) for k in entry.keys() if k != "type"}
  unknown = sorted(set(given) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"unknown keys {unknown}; known: {sorted(DEFAULTS)}")
  values = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
  if values["mode"] not in MODES:
    raise ValueError(f"mode={values['mode']!r} is not one of {MODES}")
  prompts = (expansion.LAMER_INSTRUCTIONS if values["mode"] == "lamer"
             else expansion.HYDE_TEMPLATES)
  values["prompt"] = values["prompt"] or next(iter(prompts))
  if values["prompt"] not in prompts:
    raise ValueError(f"prompt={values['prompt']!r} is not one of {sorted(prompts)} "
                     f"(mode {values['mode']})")
  if values["augment"] not in expansion.AUGMENTS:
    raise ValueError(f"augment={values['augment']!r} is not one of {expansion.AUGMENTS}")
  for key in ("candidates", "answers", "max_passage_words", "depth", "max_length", "batch_size"):
    if int(values[key]) < 1:
      raise ValueError(f"{key}={values[key]} is below 1")
  sampling = dict(values["sampling"])
  if "n" in sampling:
    raise ValueError("sampling.n: set `answers` instead")
  try:
    sampling = Sampling(n=int(values["answers"]), **sampling)
  except TypeError as error:
    raise ValueError(f"sampling: {error}") from None
  bm25 = dict(values["bm25"])
  return LamerSettings(
      mode=values["mode"], prompt=values["prompt"], candidates=int(values["candidates"]),
      answers=int(values["answers"]),
      augment=values["augment"], max_passage_words=int(values["max_passage_words"]),
      depth=int(values["depth"]), metrics=tuple(values["metrics"]),
      k1=float(bm25.get("k1", 0.9)), b=float(bm25.get("b", 0.4)), sampling=sampling,
      max_length=int(values["max_length"]), batch_size=int(values["batch_size"]),
      progress=bool(values["progress"]))


class LamerEvaluator(SplitEvaluator):
  """LameR or HyDE on one BEIR split, with plain BM25 on the same queries beside it."""

  def __init__(self, name: str, entry: Any, defaults: Any = None):
    super().__init__(name, entry, defaults, parse)
    self.requires = ("generator",) + (("query",) if self.settings.mode == "hyde" else ())

  def run(self, models: Any, out_dir: epath.Path | None) -> dict[str, float]:
    s, data = self.settings, self.data
    timings = {}
    docs = data.doc_strings()
    start = time.perf_counter()
    index = BM25Index.build(docs, k1=s.k1, b=s.b)
    depth = min(s.depth, len(data.corpus_ids))
    scores, indices = index.search(data.query_texts, depth)
    timings["bm25_s"] = time.perf_counter() - start
    bm25_run = metrics.run_from_topk(data.query_ids, data.corpus_ids, scores, indices)

    if s.mode == "lamer":
      prompts = [expansion.lamer_prompt(q, [docs[i] for i in row[:s.candidates] if i >= 0],
                                        s.prompt, max_words=s.max_passage_words)
                 for q, row in zip(data.query_texts, indices)]
    else:
      prompts = [expansion.hyde_prompt(q, s.prompt) for q in data.query_texts]
    start = time.perf_counter()
    generator = models.get("generator")
    with tqdm.tqdm(total=len(prompts), desc=f"{self.name}: generate", unit="query",
                   disable=not s.progress) as bar:
      previous = getattr(generator, "progress", None)
      if hasattr(generator, "progress"):
        generator.progress = bar.update
      try:
        answers = generator.generate(prompts, s.sampling)
      finally:
        if hasattr(generator, "progress"):
          generator.progress = previous
    timings["generate_s"] = time.perf_counter() - start

    start = time.perf_counter()
    if s.mode == "lamer":
      queries = [expansion.augmented_query(q, a, s.augment)
                 for q, a in zip(data.query_texts, answers)]
      new_scores, new_indices = index.search(queries, depth)
    else:
      queries = None
      new_scores, new_indices = self._hyde_search(models.get("query"), data, docs, answers,
                                                  depth)
    timings["search_s"] = time.perf_counter() - start
    run = metrics.run_from_topk(data.query_ids, data.corpus_ids, new_scores, new_indices)
    values = metrics.evaluate(data.qrels, run, s.metrics)
    bm25_values = metrics.evaluate(data.qrels, bm25_run, s.metrics)
    first = s.metrics[0]
    def per_query(ranking):
      return {q: v[first] for q, v in metrics.evaluate_per_query(data.qrels, ranking,
                                                                  [first]).items()}

    compared = metrics.paired_comparison(per_query(bm25_run), per_query(run))
    values.update({f"bm25/{k}": v for k, v in bm25_values.items()})
    values.update({f"vs_bm25/{first}": compared.mean_diff,
                   f"vs_bm25/{first}_ci_low": compared.ci_low,
                   f"vs_bm25/{first}_ci_high": compared.ci_high})
    if out_dir is not None and jax.process_index() == 0:
      out = files.as_path(out_dir)
      out.mkdir(parents=True, exist_ok=True)
      evaluation.write_results(out, data, run, values, settings=_jsonable(s), timings=timings)
      metrics.write_trec_run(out / "bm25_run.trec", bm25_run)
      with (out / "generations.jsonl").open("w") as f:
        for i, qid in enumerate(data.query_ids):
          f.write(json.dumps({"query_id": qid, "prompt": prompts[i], "answers": answers[i],
                              **({"augmented_query": queries[i]} if queries else {})}) + "\n")
    return values

  def _hyde_search(self, encoder, data, docs, answers, depth):
    """Mean of the query's and its N passages' embeddings, exact search over the corpus."""
    s = self.settings
    texts = [t for q, a in zip(data.query_texts, answers) for t in [q, *a]]
    kwargs = dict(max_length=s.max_length, batch_size=s.batch_size, progress=s.progress)
    vectors = encode.encode_texts(encoder, texts, desc="encode hyde", **kwargs)
    queries = vectors.reshape(len(data.query_texts), 1 + s.answers, -1).mean(axis=1)
    corpus = encode.encode_texts(encoder, docs, desc="encode corpus", **kwargs)
    scores, indices = exact_search(np.asarray(queries, np.float32),
                                   np.asarray(corpus, np.float32), depth, progress=s.progress)
    return np.asarray(scores), np.asarray(indices)


def _jsonable(settings: LamerSettings) -> dict:
  blob = dataclasses.asdict(settings)
  blob["metrics"] = list(settings.metrics)
  return blob


def build(name: str, entry: Any, defaults: Any = None) -> LamerEvaluator:
  return LamerEvaluator(name, entry, defaults)
