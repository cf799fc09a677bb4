"""Tests for retrieval_jax.index.maxp against a plain-Python reference."""

import time

import numpy as np
import pytest

from retrieval_jax.index import maxp


def _reference(scores, rows, doc_of, k):
  """Walk each ranking; a document keeps its first strictly-best passage; sort by (-score, rank)."""
  out_scores = np.full((len(scores), k), -np.inf, np.float32)
  out_rows = np.full((len(scores), k), -1, np.int64)
  for q, (row_scores, row_rows) in enumerate(zip(scores.tolist(), rows.tolist())):
    best = {}
    for position, (score, row) in enumerate(zip(row_scores, row_rows)):
      if row < 0:
        continue
      doc = int(doc_of[row])
      if doc not in best or score > best[doc][0]:
        best[doc] = (score, position)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1]))[:k]
    for slot, (doc, (score, _)) in enumerate(ranked):
      out_scores[q, slot], out_rows[q, slot] = score, doc
  return out_scores, out_rows


def _ranked_search(rng, num_queries, depth, num_passages, quantum=None, missing=0.0):
  """A best-first passage ranking; `quantum` rounds scores to force ties; some -1 slots."""
  scores = rng.normal(size=(num_queries, depth)).astype(np.float32)
  if quantum:
    scores = np.round(scores / quantum) * quantum
  scores = -np.sort(-scores, axis=1)
  rows = np.stack([rng.choice(num_passages, depth, replace=False) for _ in range(num_queries)])
  if missing:
    # Search results with holes are missing at the tail, as ScaNN and BM25 give them.
    cut = rng.integers(int(depth * (1 - missing)), depth + 1, num_queries)
    tail = np.arange(depth)[None, :] >= cut[:, None]
    rows[tail], scores[tail] = -1, -np.inf
  return scores, rows.astype(np.int64)


@pytest.mark.parametrize("quantum,missing,k", [(None, 0.0, 10), (0.5, 0.0, 10), (0.25, 0.5, 30),
                                               (None, 0.9, 50), (1.0, 0.3, 3)])
def test_matches_reference(quantum, missing, k):
  rng = np.random.default_rng(7)
  num_docs = 60
  doc_of = np.sort(rng.integers(0, num_docs, 200))  # Documents of 0 to several passages.
  scores, rows = _ranked_search(rng, 25, 40, len(doc_of), quantum, missing)
  got_scores, got_rows = maxp.max_over_passages(scores, rows, doc_of, k)
  want_scores, want_rows = _reference(scores, rows, doc_of, k)
  assert got_scores.dtype == np.float32 and got_rows.dtype == np.int64
  assert got_scores.shape == got_rows.shape == (25, k)
  np.testing.assert_array_equal(got_rows, want_rows)
  np.testing.assert_array_equal(got_scores, want_scores)


def test_unsorted_input_still_takes_the_max():
  doc_of = np.array([0, 0, 1, 1, 2])
  scores = np.array([[0.1, 0.9, 0.5, 0.5, 0.7]], np.float32)
  rows = np.array([[0, 1, 2, 3, 4]])
  got_scores, got_rows = maxp.max_over_passages(scores, rows, doc_of, 3)
  np.testing.assert_array_equal(got_rows, [[0, 2, 1]])
  np.testing.assert_allclose(got_scores, [[0.9, 0.7, 0.5]])


def test_ties_go_to_the_earlier_ranked_passage():
  doc_of = np.array([0, 1, 2, 2])
  # Documents 2 (row 3), 0 and 1 all score 1.0; 2's passage came first, then 0, then 1.
  scores = np.array([[1.0, 1.0, 1.0, 1.0]], np.float32)
  rows = np.array([[3, 0, 1, 2]])
  np.testing.assert_array_equal(maxp.max_over_passages(scores, rows, doc_of, 3)[1], [[2, 0, 1]])


def test_padding_when_fewer_documents_than_k():
  doc_of = np.array([0, 0, 0, 1, 1])
  scores = np.array([[3.0, 2.0, 1.0, 0.5], [4.0, -np.inf, -np.inf, -np.inf]], np.float32)
  rows = np.array([[0, 2, 3, 1], [4, -1, -1, -1]])
  got_scores, got_rows = maxp.max_over_passages(scores, rows, doc_of, 3)
  np.testing.assert_array_equal(got_rows, [[0, 1, -1], [1, -1, -1]])
  np.testing.assert_array_equal(got_scores, [[3.0, 1.0, -np.inf], [4.0, -np.inf, -np.inf]])


def test_one_passage_per_document_is_the_identity():
  rng = np.random.default_rng(3)
  scores, rows = _ranked_search(rng, 10, 20, 50, quantum=0.5)
  got_scores, got_rows = maxp.max_over_passages(scores, rows, np.arange(50), 20)
  np.testing.assert_array_equal(got_rows, rows)
  np.testing.assert_array_equal(got_scores, scores)


def test_640_queries_by_800_passages_is_fast():
  rng = np.random.default_rng(0)
  doc_of = np.repeat(np.arange(25_000), 4)
  scores = -np.sort(-rng.normal(size=(640, 800)).astype(np.float32), axis=1)
  rows = rng.integers(0, len(doc_of), (640, 800))
  maxp.max_over_passages(scores[:2], rows[:2], doc_of, 200)  # Warm up the allocator.
  start = time.perf_counter()
  got_scores, got_rows = maxp.max_over_passages(scores, rows, doc_of, 200)
  elapsed = time.perf_counter() - start
  print(f"[measured] max_over_passages 640 x 800 -> 200: {elapsed * 1e3:.1f} ms")
  assert elapsed < 1.0  # Typically ~50 ms; generous for a shared machine.
  want_scores, want_rows = _reference(scores[:5], rows[:5], doc_of, 200)
  np.testing.assert_array_equal(got_rows[:5], want_rows)
  np.testing.assert_array_equal(got_scores[:5], want_scores)


def test_bad_arguments():
  scores, rows, doc_of = np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64), np.zeros(4)
  with pytest.raises(ValueError, match="passage_rows"):
    maxp.max_over_passages(scores, rows[:, :2], doc_of, 2)
  with pytest.raises(ValueError, match="doc_of"):
    maxp.max_over_passages(scores, rows, doc_of[None], 2)
  with pytest.raises(ValueError, match="k must"):
    maxp.max_over_passages(scores, rows, doc_of, 0)
  with pytest.raises(ValueError, match="only 4 passages"):
    maxp.max_over_passages(scores, rows + 4, doc_of, 2)


def test_no_results_at_all():
  scores = np.full((2, 3), -np.inf, np.float32)
  rows = np.full((2, 3), -1)
  got_scores, got_rows = maxp.max_over_passages(scores, rows, np.zeros(0, np.int64), 2)
  np.testing.assert_array_equal(got_rows, -1)
  assert np.all(got_scores == -np.inf)
