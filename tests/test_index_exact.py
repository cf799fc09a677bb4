"""Tests for retrieval_jax.index.exact: NumPy reference, sharding, padding, ties, dtypes."""

import jax
from jax.sharding import Mesh
import numpy as np
import pytest

from retrieval_jax.index import exact_search


def _reference(queries, corpus, k):
  """NumPy top-k in float64: scores and a stable order (lower index first among equal scores)."""
  scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, axis=1), order


def _random(num_queries, num_docs, dim, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((num_queries, dim)).astype(dtype),
          rng.standard_normal((num_docs, dim)).astype(dtype))


def _one_device_mesh():
  return Mesh(np.array(jax.devices()[:1]), ("data",))


def test_conftest_gives_eight_devices():
  assert len(jax.local_devices()) == 8


@pytest.mark.parametrize("num_docs,k,corpus_chunk,query_batch", [
    (1000, 10, 65536, 1024),  # One chunk, one query batch.
    (1001, 7, 50, 16),  # Rows not divisible by devices; many chunks; several query batches.
    (333, 1, 128, 5),  # k = 1.
    (97, 97, 16, 64),  # k = num_docs: every row, fewer rows than 8 devices x 128.
])
def test_matches_numpy_reference(num_docs, k, corpus_chunk, query_batch):
  queries, corpus = _random(37, num_docs, 24)
  scores, indices = exact_search(queries, corpus, k, corpus_chunk=corpus_chunk,
                                 query_batch=query_batch)
  expected_scores, expected_indices = _reference(queries, corpus, k)
  assert scores.shape == indices.shape == (37, k)
  assert scores.dtype == np.float32 and indices.dtype == np.int64
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(indices, expected_indices)  # Random data: no ties.
  assert np.all(np.diff(scores, axis=1) <= 0)


def test_eight_devices_equal_one_device_exactly():
  queries, corpus = _random(50, 3001, 32, seed=1)
  for corpus_chunk in (100, 65536):
    sharded = exact_search(queries, corpus, 20, corpus_chunk=corpus_chunk, query_batch=16)
    single = exact_search(queries, corpus, 20, mesh=_one_device_mesh(), corpus_chunk=corpus_chunk,
                          query_batch=16)
    np.testing.assert_array_equal(sharded[0], single[0])
    np.testing.assert_array_equal(sharded[1], single[1])


def test_two_axis_mesh_shards_over_all_devices():
  queries, corpus = _random(9, 777, 16, seed=2)
  mesh = jax.make_mesh((4, 2), ("data", "model"), devices=jax.devices())
  scores, indices = exact_search(queries, corpus, 5, mesh=mesh, corpus_chunk=40)
  expected_scores, expected_indices = _reference(queries, corpus, 5)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(indices, expected_indices)


def test_ties_go_to_the_lower_index_across_chunks_and_devices():
  rng = np.random.default_rng(3)
  distinct = rng.standard_normal((6, 8)).astype(np.float32)
  corpus = np.tile(distinct, (300, 1))  # Row r equals row r % 6: every score is tied 300 times.
  queries = rng.standard_normal((4, 8)).astype(np.float32)
  scores, indices = exact_search(queries, corpus, 700, corpus_chunk=64, query_batch=3)
  _, expected_indices = _reference(queries, corpus, 700)
  np.testing.assert_array_equal(indices, expected_indices)
  best = np.argmax(queries @ distinct.T, axis=1)
  np.testing.assert_array_equal(indices[:, :3], best[:, None] + np.array([0, 6, 12]))


def test_padding_rows_are_never_returned_even_with_negative_scores():
  # All real scores are very negative; zero padding rows would win if they were not masked.
  queries = np.ones((3, 4), np.float32)
  corpus = -np.abs(np.random.default_rng(4).standard_normal((13, 4))).astype(np.float32) - 10
  scores, indices = exact_search(queries, corpus, 13, corpus_chunk=2)
  assert np.all(np.isfinite(scores)) and np.all(scores < -10)
  assert sorted(indices[0].tolist()) == list(range(13))


def test_float16_input_is_scored_in_float32():
  queries, corpus = _random(11, 500, 64, seed=5, dtype=np.float16)
  scores, indices = exact_search(queries, corpus, 10, corpus_chunk=32)
  expected_scores, expected_indices = _reference(queries, corpus, 10)
  assert scores.dtype == np.float32
  # float16 accumulation would be off by ~1e-1 here; float32 on float16 values is off by ~1e-5.
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(indices, expected_indices)


def test_float64_and_empty_queries():
  queries, corpus = _random(5, 40, 8, seed=6, dtype=np.float64)
  scores, indices = exact_search(queries, corpus, 3)
  np.testing.assert_array_equal(indices, _reference(queries, corpus, 3)[1])
  scores, indices = exact_search(queries[:0], corpus, 3)
  assert scores.shape == indices.shape == (0, 3)


def test_invalid_arguments():
  queries, corpus = _random(2, 10, 8)
  with pytest.raises(ValueError, match="larger than the corpus"):
    exact_search(queries, corpus, 11)
  with pytest.raises(ValueError, match="at least 1"):
    exact_search(queries, corpus, 0)
  with pytest.raises(ValueError, match="dim"):
    exact_search(queries[:, :4], corpus, 1)
