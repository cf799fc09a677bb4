"""Tests for retrieval_jax.index.maxsim: MaxSim re-ranking, brute force, end-to-end, shards.

The references are written out naively (loops over queries, documents and positions) in
float64, from float16 documents kept as lists of arrays.
"""

import json
import pathlib
import sys

import numpy as np
import pytest

from retrieval_jax.index import ScannConfig
from retrieval_jax.index import maxsim
from retrieval_jax.index.maxsim import MaxSimIndex
from retrieval_jax.index.maxsim import TokenStore
from tests import mp_maxsim_worker
from tests import multiprocess


def _unit(rng, shape):
  vectors = rng.standard_normal(shape)
  return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _docs(num_docs, min_len, max_len, dim, seed, empty=()):
  """(TokenStore, list of float64 [len, dim] documents as stored): random unit tokens."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_len, max_len + 1, num_docs)
  lengths[list(empty)] = 0
  padded = _unit(rng, (num_docs, max_len, dim))
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  store = TokenStore.from_padded(padded, mask)
  docs = [padded[i, :lengths[i]].astype(np.float16).astype(np.float64) for i in range(num_docs)]
  return store, docs


def _queries(num_queries, length, dim, seed):
  return _unit(np.random.default_rng(seed), (num_queries, length, dim)).astype(np.float32)


def _naive_score(query, query_mask, doc):
  if len(doc) == 0:
    return -np.inf
  total = 0.0
  for i, vector in enumerate(query.astype(np.float64)):
    if query_mask[i]:
      total += max(float(vector @ token) for token in doc)
  return total


def _naive_top_k(queries, query_mask, docs, candidates, k):
  """Per query: the distinct candidates sorted by (-score, row), padded with (-inf, -1)."""
  scores = np.full((len(queries), k), -np.inf)
  rows = np.full((len(queries), k), -1)
  for q, query in enumerate(queries):
    scored = []
    for row in sorted(set(int(c) for c in candidates[q] if c >= 0)):
      score = _naive_score(query, query_mask[q], docs[row])
      if np.isfinite(score):
        scored.append((-score, row))
    for slot, (negative, row) in enumerate(sorted(scored)[:k]):
      scores[q, slot], rows[q, slot] = -negative, row
  return scores, rows


def _naive_token_union(queries, query_mask, docs, depth):
  """Per query: the documents of each kept query vector's `depth` best tokens (exact)."""
  tokens = np.concatenate([d for d in docs if len(d)])
  doc_of = np.concatenate([[i] * len(d) for i, d in enumerate(docs) if len(d)])
  unions = []
  for q, query in enumerate(queries):
    found = set()
    for i, vector in enumerate(query.astype(np.float64)):
      if query_mask[q][i]:
        found |= set(doc_of[np.argsort(-(tokens @ vector), kind="stable")[:depth]].tolist())
    unions.append(found)
  return unions


def _assert_results(found, expected):
  np.testing.assert_array_equal(found[1], expected[1])
  np.testing.assert_allclose(found[0], expected[0], atol=1e-5, rtol=0)
  assert found[0].dtype == np.float32 and found[1].dtype == np.int64


def _exhaustive(store):
  """ScaNN settings under which the token search is exact: every leaf, everything reordered."""
  return ScannConfig(num_leaves=10, num_leaves_to_search=10, reorder_k=store.num_tokens)


def test_token_store_from_padded_drops_masked_rows_and_stores_float16():
  rng = np.random.default_rng(0)
  padded = rng.standard_normal((4, 5, 3)).astype(np.float32)
  mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
  store = TokenStore.from_padded(padded, mask)
  assert store.vectors.dtype == np.float16 and store.offsets.dtype == np.int64
  np.testing.assert_array_equal(store.offsets, [0, 3, 3, 8, 9])
  kept = [padded[0, [0, 1, 3]], padded[2], padded[3, [1]]]
  np.testing.assert_array_equal(store.vectors, np.concatenate(kept).astype(np.float16))
  np.testing.assert_array_equal(store.doc_of_token(), [0, 0, 0, 2, 2, 2, 2, 2, 3])
  assert (store.num_docs, store.num_tokens, store.dim) == (4, 9, 3)
  assert store.nbytes == 9 * 3 * 2 + 5 * 8
  middle = store.slice(1, 3)
  np.testing.assert_array_equal(middle.offsets, [0, 0, 5])
  np.testing.assert_array_equal(middle.vectors, store.vectors[3:8])
  again = TokenStore.concatenate([store.slice(0, 2), middle.slice(1, 2), store.slice(3, 4)])
  np.testing.assert_array_equal(again.offsets, store.offsets)
  np.testing.assert_array_equal(again.vectors, store.vectors)
  with pytest.raises(ValueError, match="mask"):
    TokenStore.from_padded(padded, mask[:, :4])
  with pytest.raises(ValueError, match="offsets"):
    TokenStore(store.vectors, [0, 5, 4, 9])
  with pytest.raises(ValueError, match="stop"):
    store.slice(2, 5)
  with pytest.raises(ValueError, match="dim"):
    TokenStore.concatenate([store, TokenStore(np.zeros((1, 2)), [0, 1])])


def test_rerank_equals_naive_maxsim_with_masks_duplicates_and_empty_slots():
  store, docs = _docs(30, 1, 12, 8, seed=1, empty=(4, 17))
  queries = _queries(6, 5, 8, seed=2)
  query_mask = np.ones((6, 5), int)
  query_mask[1, 3:] = 0  # a padded query
  query_mask[4] = 0  # nothing kept: every non-empty candidate scores 0
  rng = np.random.default_rng(3)
  candidates = rng.integers(-1, 30, (6, 9))
  candidates[:, 0] = 4  # an empty document is never returned
  candidates[:, 1] = candidates[:, 2]  # duplicates are scored once
  candidates[2] = -1  # no candidates at all
  for k in (3, 12):  # 12: more than the distinct candidates
    found = maxsim.rerank(queries, store, candidates, k, query_mask)
    _assert_results(found, _naive_top_k(queries, query_mask, docs, candidates, k))
  scores, rows = maxsim.rerank(queries, store, candidates, 12, query_mask)
  assert (rows[2] == -1).all() and np.isneginf(scores[2]).all()
  assert not np.isin(rows, [4, 17]).any()
  assert (scores[4][rows[4] >= 0] == 0).all()
  # Tiny blocks (one document per matmul) change nothing, to the bit.
  tiny = maxsim.rerank(queries, store, candidates, 12, query_mask, block_size=1)
  np.testing.assert_array_equal(tiny[0], scores)
  np.testing.assert_array_equal(tiny[1], rows)


def test_brute_force_and_maxsim_scores_equal_naive_maxsim():
  store, docs = _docs(40, 1, 10, 8, seed=4, empty=(0, 39))
  queries = _queries(5, 6, 8, seed=5)
  query_mask = (np.random.default_rng(6).random((5, 6)) < 0.8).astype(int)
  everything = np.tile(np.arange(40), (5, 1))
  for k in (1, 10, 45):  # 45: more than the documents
    _assert_results(maxsim.brute_force(queries, store, k, query_mask),
                    _naive_top_k(queries, query_mask, docs, everything, k))
  rows = np.array([3, 0, 3, 17])
  expected = [[_naive_score(q, m, docs[r]) for r in rows] for q, m in zip(queries, query_mask)]
  found = maxsim.maxsim_scores(queries, store, rows, query_mask)
  np.testing.assert_allclose(found, expected, atol=1e-5)
  assert found.dtype == np.float32 and np.isneginf(found[:, 1]).all()
  small = maxsim.brute_force(queries, store, 10, query_mask, block_size=64)
  _assert_results(small, maxsim.brute_force(queries, store, 10, query_mask))


def test_copied_documents_tie_and_the_lower_row_comes_first():
  store, _ = _docs(20, 3, 9, 8, seed=7)
  # Rows 20..39 copy rows 0..19, and row 40 copies row 5 again.
  store = TokenStore.concatenate([store, store, store.slice(5, 6)])
  queries = _queries(4, 4, 8, seed=8)
  scores, rows = maxsim.brute_force(queries, store, 41)
  for q in range(4):
    for slot in range(0, 41):
      tied = scores[q] == scores[q, slot]
      assert (np.diff(rows[q][tied]) > 0).all()  # among equal scores, rows ascend
    assert list(rows[q]).index(5) < list(rows[q]).index(25) < list(rows[q]).index(40)
  candidates = np.tile([40, 25, -1, 5, 25, 7, 27], (4, 1))
  reranked = maxsim.rerank(queries, store, candidates, 5)
  for q in range(4):
    order = [r for r in rows[q] if r in {40, 25, 5, 7, 27}]
    np.testing.assert_array_equal(reranked[1][q], order)
    np.testing.assert_array_equal(reranked[0][q], scores[q][np.isin(rows[q], order)])


def test_end_to_end_with_exhaustive_scann_tree_equals_brute_force():
  store, docs = _docs(60, 12, 30, 16, seed=9)
  assert store.num_tokens > 1000  # a real tree, not ScaNN's brute force
  index = MaxSimIndex.build(store, _exhaustive(store))
  assert not index.token_index.brute_force
  queries = _queries(8, 6, 16, seed=10)
  query_mask = np.ones((8, 6), int)
  query_mask[3, 4:] = 0
  found = index.search(queries, 10, store.num_tokens, query_mask)
  _assert_results(found, maxsim.brute_force(queries, store, 10, query_mask))
  # ColBERT v1 with a moderate k': the exact token search's candidates, re-ranked exactly.
  unions = _naive_token_union(queries, query_mask, docs, 4)
  assert max(len(union) for union in unions) < 60  # not every document is a candidate
  candidates = np.full((8, 60), -1)
  for q, union in enumerate(unions):
    candidates[q, :len(union)] = sorted(union)
  moderate = index.search(queries, 10, 4, query_mask)
  _assert_results(moderate, _naive_top_k(queries, query_mask, docs, candidates, 10))
  assert not np.array_equal(moderate[1], found[1])  # ... and that changes the ranking


def test_brute_force_scann_candidates_are_the_exact_token_search_union():
  store, docs = _docs(50, 2, 15, 8, seed=11, empty=(7,))
  assert store.num_tokens < 1000
  index = MaxSimIndex.build(store, doc_start=100)
  assert index.token_index.brute_force
  queries = _queries(7, 5, 8, seed=12)
  query_mask = np.ones((7, 5), int)
  query_mask[0, 2:] = 0
  scores, doc_rows = index.search_tokens(queries, 6, query_mask)
  assert scores.shape == doc_rows.shape == (35, 6)
  assert (doc_rows.reshape(7, 5, 6)[0, 2:] == -1).all()  # padding positions search nothing
  for q, union in enumerate(_naive_token_union(queries, query_mask, docs, 6)):
    assert set(doc_rows.reshape(7, -1)[q].tolist()) - {-1} == {100 + d for d in union}
  found = index.search(queries, 8, 6, query_mask)
  local = maxsim.rerank(queries, store, doc_rows.reshape(7, -1) - 100, 8, query_mask)
  np.testing.assert_array_equal(found[1], np.where(local[1] >= 0, local[1] + 100, -1))
  np.testing.assert_array_equal(found[0], local[0])
  # One process: the sharded search is the local one.
  sharded = maxsim.search_sharded(index, queries, 8, 6, query_mask, query_batch=3)
  np.testing.assert_array_equal(sharded[1], found[1])
  np.testing.assert_array_equal(sharded[0], found[0])


def test_save_load_round_trip_and_memory(tmp_path):
  store, _ = _docs(60, 12, 30, 16, seed=13, empty=(3,))
  index = MaxSimIndex.build(store, _exhaustive(store), doc_start=7)
  queries = _queries(5, 6, 16, seed=14)
  before = index.search(queries, 10, 20)
  memory = index.memory()
  index.save(tmp_path / "index")
  settings = json.loads((tmp_path / "index" / "maxsim.json").read_text())
  assert settings["doc_start"] == 7 and settings["num_tokens"] == store.num_tokens
  for loaded in (MaxSimIndex.load(tmp_path / "index"),
                 MaxSimIndex.load(tmp_path / "index", mmap=True)):
    after = loaded.search(queries, 10, 20)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert loaded.doc_start == 7 and loaded.store.vectors.dtype == np.float16
    np.testing.assert_array_equal(loaded.store.offsets, store.offsets)
    assert loaded.memory() == memory
  assert memory["token_vectors_bytes"] == store.num_tokens * 16 * 2
  assert memory["offsets_bytes"] == (60 + 1) * 8
  scann_files = sum(p.stat().st_size for p in (tmp_path / "index" / "scann").rglob("*"))
  assert memory["scann_bytes"] == scann_files > store.num_tokens * 16 * 4  # float32 copy
  total = memory["token_vectors_bytes"] + memory["offsets_bytes"] + memory["scann_bytes"]
  assert memory["total_bytes"] == total
  assert memory["bytes_per_token"] == pytest.approx(total / store.num_tokens)
  assert memory["bytes_per_document"] == pytest.approx(total / 60)
  assert (memory["num_tokens"], memory["num_docs"]) == (store.num_tokens, 60)


def test_save_load_through_a_bucket(gcs_bucket):
  store, _ = _docs(20, 2, 8, 8, seed=15)
  index = MaxSimIndex.build(store)
  queries = _queries(3, 4, 8, seed=16)
  index.save(f"{gcs_bucket}/maxsim")
  loaded = MaxSimIndex.load(f"{gcs_bucket}/maxsim")
  np.testing.assert_array_equal(loaded.search(queries, 5, 3)[1], index.search(queries, 5, 3)[1])


def test_an_index_without_tokens_returns_empty_slots(tmp_path):
  store = TokenStore(np.zeros((0, 8), np.float16), [0, 0, 0])
  index = MaxSimIndex.build(store, doc_start=5)
  assert index.token_index is None
  scores, rows = index.search(_queries(2, 3, 8, seed=17), 4, 10)
  assert (rows == -1).all() and np.isneginf(scores).all() and rows.shape == (2, 4)
  index.save(tmp_path / "empty")
  assert MaxSimIndex.load(tmp_path / "empty").memory()["scann_bytes"] == 0


def test_arguments_are_checked():
  store, _ = _docs(10, 1, 5, 8, seed=18)
  queries = _queries(2, 3, 8, seed=19)
  index = MaxSimIndex.build(store)
  with pytest.raises(ValueError, match="queries"):
    maxsim.brute_force(queries[..., :4], store, 3)
  with pytest.raises(ValueError, match="query_mask"):
    maxsim.rerank(queries, store, np.zeros((2, 1), int), 3, np.ones((2, 4)))
  with pytest.raises(ValueError, match="candidates"):
    maxsim.rerank(queries, store, np.array([[10], [0]]), 3)
  with pytest.raises(ValueError, match="candidates"):
    maxsim.rerank(queries, store, np.zeros((3, 1), int), 3)
  with pytest.raises(ValueError, match="doc_rows"):
    maxsim.maxsim_scores(queries, store, [0, 10])
  with pytest.raises(ValueError, match="k must"):
    index.search(queries, 0, 3)
  with pytest.raises(ValueError, match="token_depth"):
    index.search(queries, 3, 0)
  with pytest.raises(ValueError, match="doc_start"):
    MaxSimIndex.build(store, doc_start=-1)


def test_two_processes_equal_one_index_over_the_whole_corpus(tmp_path):
  out = tmp_path / "maxsim.npz"
  finished = multiprocess.run(
      [sys.executable, str(pathlib.Path(mp_maxsim_worker.__file__)), str(out)], 2, 4,
      tmp_path / "logs", timeout=120).check()
  print(f"2 processes x 4 devices, sharded MaxSim: {finished.seconds:.1f} s")
  found = np.load(out)
  assert int(found["processes"]) == 2
  store, queries, query_mask = mp_maxsim_worker.corpus_and_queries()
  assert (found["shard_tokens"] > 1000).all()  # each shard has a real ScaNN tree
  # k' above every token makes every document a candidate: the brute-force top-k, with the
  # copies across the shard boundary (rows 90.. copy rows 0..) ranked lower row first.
  expected = maxsim.brute_force(queries, store, mp_maxsim_worker.K, query_mask)
  _assert_results((found["all_scores"], found["all_rows"]), expected)
  copied = [row for q in expected[1] for row in q if row < mp_maxsim_worker.COPIES
            and row + mp_maxsim_worker.DISTINCT in q]
  assert copied  # a document and its copy in one list, the lower row (process 0's) first
  # A moderate k' on the corpus without copies: what one index over it returns.
  distinct = store.slice(0, mp_maxsim_worker.DISTINCT)
  whole = MaxSimIndex.build(distinct, mp_maxsim_worker.config(distinct))
  one = whole.search(queries, mp_maxsim_worker.K, mp_maxsim_worker.DEPTH, query_mask)
  np.testing.assert_array_equal(found["depth_rows"], one[1])
  np.testing.assert_allclose(found["depth_scores"], one[0], atol=1e-6, rtol=0)
