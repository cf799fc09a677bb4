"""index.sharded: merging per-shard top-k lists (the cross-process run is in test_multiprocess)."""

import numpy as np
import pytest

from retrieval_jax.index import exact_search, sharded


def test_merging_shard_lists_equals_searching_the_whole_corpus():
  rng = np.random.default_rng(0)
  corpus = rng.normal(size=(300, 8)).astype(np.float32)
  corpus[250:] = corpus[:50]  # ties across shards: the lower row must come first
  queries = rng.normal(size=(9, 8)).astype(np.float32)
  bounds = [(0, 128), (128, 256), (256, 300)]
  lists = []
  for start, stop in bounds:
    scores, rows = exact_search(queries, corpus[start:stop], 10)
    lists.append((scores, rows + start))
  merged = sharded.merge_topk(np.stack([s for s, _ in lists]), np.stack([r for _, r in lists]),
                              10)
  expected = exact_search(queries, corpus, 10)
  np.testing.assert_array_equal(merged[1], expected[1])
  np.testing.assert_allclose(merged[0], expected[0], rtol=1e-6)


def test_empty_slots_go_last_and_short_lists_are_padded():
  scores = np.array([[[3.0, -np.inf]], [[5.0, 1.0]]], np.float32)
  rows = np.array([[[7, -1]], [[2, 4]]])
  merged_scores, merged_rows = sharded.merge_topk(scores, rows, 5)
  np.testing.assert_array_equal(merged_rows, [[2, 7, 4, -1, -1]])
  assert np.isneginf(merged_scores[0, 3:]).all()


def test_one_process_search_is_the_local_search():
  queries = np.eye(3, dtype=np.float32)
  shard = np.eye(3, dtype=np.float32)[::-1]
  scores, rows = sharded.search_shards(queries, shard, 0, 2, lambda q, c, k: exact_search(q, c, k))
  np.testing.assert_array_equal(rows[:, 0], [2, 1, 0])
  with pytest.raises(ValueError, match="shards, queries"):
    sharded.merge_topk(np.zeros((2, 3)), np.zeros((2, 3)), 1)
