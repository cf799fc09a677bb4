"""Tests for retrieval_jax.metrics: hand-derived values, MRR@k cut, missing queries, run files."""

import math

import numpy as np
import pytest

from retrieval_jax import metrics

# Two judged queries plus one the run never retrieves for.
#   q1: relevant d1 (grade 1) and d2 (grade 2); the run ranks d3 (not relevant), d1, d2.
#   q2: relevant d4; the run ranks it first.
#   q3: relevant d5; absent from the run.
_QRELS = {"q1": {"d1": 1, "d2": 2}, "q2": {"d4": 1}, "q3": {"d5": 1}}
_RUN = {"q1": {"d3": 0.9, "d1": 0.8, "d2": 0.7}, "q2": {"d4": 1.0}, "q_unjudged": {"d1": 5.0}}

# q1 by hand (trec_eval: gain = grade, discount log2(rank + 1)):
#   DCG  = 0 / log2(2) + 1 / log2(3) + 2 / log2(4) = 0.63093 + 1
#   IDCG = 2 / log2(2) + 1 / log2(3)               = 2 + 0.63093
#   AP   = (1/2 + 2/3) / 2; first relevant at rank 2 -> RR = 1/2; P@2 = 1/2; recall@1 = 0.
_Q1_NDCG = (1 / math.log2(3) + 1) / (2 + 1 / math.log2(3))
_Q1_AP = (1 / 2 + 2 / 3) / 2


def test_per_query_values_match_hand_derivation():
  per_query = metrics.evaluate_per_query(
      _QRELS, _RUN, ["ndcg@10", "mrr@10", "recall@1", "recall@10", "precision@2", "map", "map@2"])
  assert set(per_query) == {"q1", "q2", "q3"}  # The unjudged run query is ignored.
  q1 = per_query["q1"]
  assert q1["ndcg@10"] == pytest.approx(_Q1_NDCG)
  assert q1["mrr@10"] == pytest.approx(0.5)
  assert q1["recall@1"] == 0.0 and q1["recall@10"] == 1.0
  assert q1["precision@2"] == pytest.approx(0.5)
  assert q1["map"] == pytest.approx(_Q1_AP)
  assert q1["map@2"] == pytest.approx(0.5 / 2)  # Only d1 at rank 2 is within the cut; 2 relevant.
  q2 = per_query["q2"]
  for name in ["ndcg@10", "mrr@10", "recall@1", "map", "map@2"]:
    assert q2[name] == pytest.approx(1.0)
  # trec_eval divides by k even when fewer documents were retrieved.
  assert q2["precision@2"] == pytest.approx(0.5)
  assert all(value == 0.0 for value in per_query["q3"].values())


def test_evaluate_averages_over_qrels_queries_with_missing_ones_as_zero():
  result = metrics.evaluate(_QRELS, _RUN, ["ndcg@10", "mrr@10", "map", "recall@100"])
  assert list(result) == ["ndcg@10", "mrr@10", "map", "recall@100"]
  assert result["ndcg@10"] == pytest.approx((_Q1_NDCG + 1 + 0) / 3)
  assert result["mrr@10"] == pytest.approx((0.5 + 1 + 0) / 3)
  assert result["map"] == pytest.approx((_Q1_AP + 1 + 0) / 3)
  assert result["recall@100"] == pytest.approx(2 / 3)


def test_default_metrics_and_empty_ranking_equal_missing_query():
  missing = metrics.evaluate(_QRELS, _RUN)
  empty = metrics.evaluate(_QRELS, dict(_RUN, q3={}))
  assert set(missing) == set(metrics.DEFAULT_METRICS)
  assert missing == empty


def test_mrr_at_k_truncates_the_run():
  qrels = {"q": {"relevant": 1}}
  run = {"q": {"a": 4.0, "b": 3.0, "c": 2.0, "relevant": 1.0}}  # The relevant document is 4th.
  result = metrics.evaluate(qrels, run, ["mrr@3", "mrr@4", "mrr"])
  assert result == {"mrr@3": 0.0, "mrr@4": 0.25, "mrr": 0.25}


def test_mrr_at_k_truncation_follows_trec_eval_tie_order():
  # trec_eval puts the tied "b" before "a" (doc id descending): "a" is at rank 2.
  qrels = {"q": {"a": 1}}
  run = {"q": {"a": 1.0, "b": 1.0}}
  result = metrics.evaluate(qrels, run, ["mrr", "mrr@1", "mrr@2"])
  assert result == {"mrr": 0.5, "mrr@1": 0.0, "mrr@2": 0.5}


def test_query_with_only_zero_judgments_counts_as_zero_and_unjudged_is_dropped():
  qrels = {"q1": {"d1": 1}, "q_zero": {"d2": 0}, "q_none": {}}
  run = {"q1": {"d1": 1.0}, "q_zero": {"d2": 1.0}}
  assert set(metrics.evaluate_per_query(qrels, run, ["map"])) == {"q1", "q_zero"}
  assert metrics.evaluate(qrels, run, ["map"]) == {"map": 0.5}


@pytest.mark.parametrize("name", ["ndcg", "ndcg@0", "mrr@x", "bpref", "recall@-1"])
def test_unknown_metric_names_are_rejected(name):
  with pytest.raises(ValueError, match="supported: ndcg@k"):
    metrics.evaluate(_QRELS, _RUN, [name])


def test_empty_qrels_is_an_error():
  with pytest.raises(ValueError, match="nothing to average"):
    metrics.evaluate({}, _RUN)


def test_run_from_topk_skips_padding_and_keeps_best_duplicate():
  scores = np.array([[3.0, 2.0, 1.0], [5.0, -np.inf, -np.inf]], np.float32)
  indices = np.array([[2, 0, 2], [1, -1, -1]], np.int64)
  run = metrics.run_from_topk(["qa", "qb"], np.array(["x", "y", "z"]), scores, indices)
  assert run == {"qa": {"z": 3.0, "x": 2.0}, "qb": {"y": 5.0}}
  with pytest.raises(ValueError, match="shape"):
    metrics.run_from_topk(["qa"], ["x"], scores, indices)


def test_write_read_round_trip_is_exact(tmp_path):
  rng = np.random.default_rng(0)
  run = {f"q{q}": {f"doc{d}": float(np.float32(rng.standard_normal())) for d in range(20)}
         for q in range(5)}
  run["q_empty"] = {}
  path = tmp_path / "run.trec"
  metrics.write_trec_run(path, run)
  read = metrics.read_trec_run(path)
  assert read == {qid: docs for qid, docs in run.items() if docs}
  non_empty = {qid: docs for qid, docs in run.items() if docs}
  assert metrics.evaluate(_QRELS, read) == metrics.evaluate(_QRELS, non_empty)


def test_written_order_ranks_and_ties_are_deterministic(tmp_path):
  run = {"q2": {"b": 1.0, "c": 2.0, "a": 1.0}, "q1": {"x": 0.5}}
  path = tmp_path / "run.trec"
  metrics.write_trec_run(path, run, tag="bm25")
  assert path.read_text().splitlines() == [
      "q2 Q0 c 1 2.0 bm25",
      "q2 Q0 b 2 1.0 bm25",  # Tie with "a": doc id descending, as trec_eval ranks it.
      "q2 Q0 a 3 1.0 bm25",
      "q1 Q0 x 1 0.5 bm25",
  ]
  # The same run given in another order writes the same file.
  reordered = {"q2": {"a": 1.0, "b": 1.0, "c": 2.0}, "q1": {"x": 0.5}}
  metrics.write_trec_run(tmp_path / "again.trec", reordered, tag="bm25")
  assert (tmp_path / "again.trec").read_text() == path.read_text()


def test_bad_ids_and_malformed_files_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="whitespace"):
    metrics.write_trec_run(tmp_path / "x.trec", {"q 1": {"d": 1.0}})
  bad = tmp_path / "bad.trec"
  bad.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2\n")
  with pytest.raises(ValueError, match="bad.trec:2"):
    metrics.read_trec_run(bad)
  bad.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d1 2 0.4 tag\n")
  with pytest.raises(ValueError, match="twice"):
    metrics.read_trec_run(bad)


# --- paired comparison of two runs -------------------------------------------------------------


def test_paired_comparison_of_a_run_with_itself_and_with_a_shift():
  values = {f"q{i}": v for i, v in enumerate(np.random.default_rng(0).random(30))}
  same = metrics.paired_comparison(values, values)
  assert (same.mean_diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
  assert (same.wins, same.losses, same.num_queries) == (0, 0, 30)
  shifted = metrics.paired_comparison(values, {q: v + 0.1 for q, v in values.items()})
  assert shifted.mean_diff == pytest.approx(0.1)
  assert shifted.ci_low == pytest.approx(0.1) and shifted.ci_high == pytest.approx(0.1)
  assert shifted.p_value < 0.001 and shifted.wins == 30


def test_paired_randomisation_p_value_matches_exact_enumeration():
  """8 queries: all 256 sign patterns enumerated give the exact two-sided p-value."""
  diff = np.array([0.3, -0.1, 0.25, 0.05, -0.2, 0.4, 0.15, -0.05])
  a = {f"q{i}": 0.5 for i in range(8)}
  b = {f"q{i}": 0.5 + d for i, d in enumerate(diff)}
  signs = np.array(np.meshgrid(*[[-1, 1]] * 8)).reshape(8, -1).T
  exact = np.mean(np.abs((signs * diff).mean(axis=1)) >= abs(diff.mean()) - 1e-12)
  result = metrics.paired_comparison(a, b, num_samples=40000, seed=1)
  assert result.p_value == pytest.approx(exact, abs=0.01)
  assert result.ci_low < diff.mean() < result.ci_high


def test_paired_comparison_needs_the_same_queries():
  with pytest.raises(ValueError, match="same"):
    metrics.paired_comparison({"q1": 1.0}, {"q2": 1.0})
  with pytest.raises(ValueError, match="same"):
    metrics.paired_comparison({}, {})
