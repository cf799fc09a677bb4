"""The `reqa` evaluator: pytrec_eval's numbers are squad_eval.py's, BM25 and dense end to end."""

import json
import sys
import time

import numpy as np
import pytest
from scipy.stats import rankdata

from retrieval_jax import encode, evaluators, metrics, run_config
from retrieval_jax.data import reqa
from retrieval_jax.evaluators import reqa as reqa_evaluator
from retrieval_jax.recipes import base
from tests import helpers
from tests.test_reqa_data import TINY_SQUAD, random_squad, script_reference

sys.path.insert(0, str(helpers.REPO))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position

KEYS = {"recall@1", "recall@5", "recall@10", "recall@50", "recall@100", "mrr", "questions",
        "candidates"}


def script_metrics(squad, scores_of_text):
  """squad_eval.py's `_eval_queries` + `_chunked_eval` (sentence level) on given scores.

  Args:
    squad: The SQuAD dict.
    scores_of_text: question text -> a score per master-index row.
  """
  queries, _, response_index = script_reference(squad)
  best = {}
  for question, answer in queries:
    ranks = rankdata(scores_of_text[question] * -1)
    rank = min(ranks[i] for i in response_index[answer])
    best[question] = min(best.get(question, sys.maxsize), rank)
  values = {f"recall@{n}": len([r for r in best.values() if r <= n]) / len(best)
            for n in reqa_evaluator.RECALL_CUTOFFS}
  values["mrr"] = sum(1 / r for r in best.values()) / len(best)
  return values


def test_success_at_k_is_any_relevant_in_the_top_k():
  qrels = {"a": {"d1": 1, "d3": 1}, "b": {"d9": 1}}
  run = {"a": {"d0": 3.0, "d1": 2.0, "d3": 1.5}, "b": {"d0": 1.0}}
  values = metrics.evaluate(qrels, run, ["success@1", "success@2", "recall@2", "mrr"])
  assert values == {"success@1": 0.0, "success@2": 0.5, "recall@2": 0.25, "mrr": 0.25}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pytrec_eval_equals_the_script_without_ties_at_full_depth(seed):
  squad = random_squad(seed, articles=12, pool_size=150)
  data = reqa.ReqaData.from_squad(squad)
  found = data.evaluation_set()
  assert len(found.candidate_ids) > 100  # every cut-off matters
  rng = np.random.default_rng(seed)
  scores = {text: rng.normal(size=len(data.candidates)) for text in found.query_texts}
  run = {qid: {c: float(scores[text][int(c)]) for c in found.candidate_ids}
         for qid, text in zip(found.query_ids, found.query_texts)}
  ours = reqa_evaluator.reqa_metrics(found.qrels, run)
  assert ours == pytest.approx(script_metrics(squad, scores))
  assert 0 < ours["recall@1"] < ours["recall@50"] < 1


def _entry(tmp_path, **settings):
  path = tmp_path / "tiny.json"
  path.write_text(json.dumps(TINY_SQUAD))
  entry = common.reqa_eval()
  entry.data.path = str(path)
  entry.update(progress=False, **settings)
  return entry


def test_bm25_end_to_end_writes_metrics_and_run(tmp_path):
  entry = _entry(tmp_path, index="bm25")
  config = common.base_config()
  config.evals = {"reqa": entry}
  (evaluator,) = evaluators.build_all(config)
  assert evaluator.requires == ()
  values = evaluators.run_all([evaluator], base.EvalModels(), tmp_path / "out")
  written = json.loads((tmp_path / "out" / "reqa" / "metrics.json").read_text())
  assert set(written) == KEYS and values == {f"reqa/{k}": v for k, v in written.items()}
  assert (written["questions"], written["candidates"]) == (8, 10)
  # Six questions find their sentence first; "What is the subject?" and "When did they meet?"
  # share no stemmed non-stopword with any candidate, so BM25 returns nothing for them.
  assert {k: written[k] for k in KEYS - {"questions", "candidates"}} == {
      k: 0.75 for k in KEYS - {"questions", "candidates"}}
  lines = (tmp_path / "out" / "reqa" / "run.trec").read_text().splitlines()
  assert {line.split()[0] for line in lines} == set(evaluator.eval_set.query_ids) - {"b0", "d0"}
  info = json.loads((tmp_path / "out" / "reqa" / "eval_info.json").read_text())
  assert info["settings"]["index"] == "bm25" and info["settings"]["data"]["candidates"] == "all"


def test_split_and_test_pool_change_what_is_ranked(tmp_path):
  entry = _entry(tmp_path, index="bm25")
  entry.data.update(train_fraction=0.5, seed=0, candidates="test")
  evaluator = evaluators.build("held_out", entry)
  _, test = reqa.split_by_article(4, 0.5, 0)
  data = reqa.ReqaData.from_squad(TINY_SQUAD)
  assert evaluator.eval_set == data.evaluation_set(test, candidates="test")
  values = evaluator.run(base.EvalModels(), None)
  assert values["candidates"] == len(data.candidates_of(test)) < 10


def test_dense_end_to_end_equals_the_script_on_the_tiny_file(tmp_path, minilm_dir):
  model_dir, _, _ = helpers.write_tiny_bert(tmp_path / "bert", minilm_dir)
  encoder = encode.load_encoder(model_dir)
  entry = _entry(tmp_path, index="exact", max_length=64, query_max_length=32, batch_size=8)
  evaluator = evaluators.build("reqa", entry)
  assert evaluator.requires == ("query", "passage")
  with pytest.raises(ValueError, match=r"needs the model roles \['query', 'passage'\]"):
    evaluators.check_models(evaluator, base.EvalModels(), "r")
  values = evaluator.run(base.EvalModels(query=encoder, passage=encoder), tmp_path / "out")
  assert set(json.loads((tmp_path / "out" / "metrics.json").read_text())) == KEYS
  # The same model's scores ranked by the script's rules give the same numbers.
  found = evaluator.eval_set
  queries = encode.encode_texts(encoder, found.query_texts, max_length=32, progress=False)
  docs = encode.encode_texts(encoder, found.documents, max_length=64, progress=False)
  scores = dict(zip(found.query_texts, queries @ docs.T))
  expected = script_metrics(TINY_SQUAD, scores)
  assert {k: values[k] for k in expected} == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("key,value,message", [
    ("index", "scann", r"evals\.e\.index='scann' is not one of"),
    ("depth", 50, r"evals\.e\.depth=50 is below 100"),
    ("data.split", "test", r"evals\.e\.data\.split='test'"),
    ("data.candidates", "train", r"evals\.e\.data\.candidates='train'"),
    ("data.train_fraction", 1.0, r"evals\.e\.data\.train_fraction=1\.0 is not in \(0, 1\)"),
    ("data.max_questions", 0, r"evals\.e\.data\.max_questions=0"),
])
def test_bad_entries_name_the_key(tmp_path, key, value, message):
  entry = _entry(tmp_path)
  target = entry.data if key.startswith("data.") else entry
  target[key.split(".")[-1]] = value
  with pytest.raises(ValueError, match=message):
    evaluators.build("e", entry)


def test_unknown_data_key_and_missing_file(tmp_path):
  entry = _entry(tmp_path)
  entry.data.name = "scifact"
  with pytest.raises(ValueError, match=r"evals\.e\.data has unknown keys \['name'\]"):
    evaluators.build("e", entry)
  missing = _entry(tmp_path)
  missing.data.path = str(tmp_path / "nope.json")
  # Read on first use, still the user's input: main.py prints it in one line.
  with pytest.raises(run_config.InputError, match="nope.json does not exist") as raised:
    evaluators.build("e", missing).eval_set  # pylint: disable=expression-not-assigned
  assert isinstance(raised.value.__cause__, FileNotFoundError)


@pytest.mark.slow
def test_bm25_on_the_real_train_file():
  from tests.conftest import shared_data_dir  # pylint: disable=g-import-not-at-top
  root = shared_data_dir()
  if root is None or not (root / "squad" / "train-v1.1.json.gz").exists():
    pytest.skip("SQuAD not found: set $RETRIEVAL_JAX_DATA or place ../shared/data/squad")
  entry = common.reqa_eval()
  entry.update(index="bm25", progress=False)
  entry.data.path = str(root / "squad")
  start = time.perf_counter()
  values = evaluators.build("reqa", entry).run(base.EvalModels(), None)
  print(f"ReQA SQuAD train, BM25: {values} in {time.perf_counter() - start:.0f} s")
  assert (values["questions"], values["candidates"]) == (87355, 91707)
  # Measured: R@1 0.601, R@5 0.783, R@10 0.836, R@50 0.918, R@100 0.939, MRR 0.686.
  assert values["recall@1"] == pytest.approx(0.6010, abs=2e-3)
  assert values["recall@100"] == pytest.approx(0.9391, abs=2e-3)
  assert values["mrr"] == pytest.approx(0.6857, abs=2e-3)
