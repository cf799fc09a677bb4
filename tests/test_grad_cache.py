"""Tests for retrieval_jax.grad_cache: GradCache equals full-batch autodiff.

A tiny two-tower TextEncoder (separate query and passage parameters, as in DPR) embeds 8 queries
and 16 passages (one hard negative each); the loss is the in-batch softmax. GradCache's loss and
gradients must match `jax.value_and_grad` of the same loss computed without chunking.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from retrieval_jax import grad_cache, losses
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, init_params
from retrieval_jax.models.pooling import PoolingConfig

_CONFIG = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
_MODEL = TextEncoder(_CONFIG, PoolingConfig(mode="cls"))
_QUERIES, _NEGATIVES = 8, 1


def embed(params, inputs, rng, tower):
  """Two towers: the tower name picks the parameter sub-tree; rng None means no dropout."""
  return _MODEL.apply({"params": params[tower]}, inputs["input_ids"], inputs["attention_mask"],
                      deterministic=rng is None, rngs={} if rng is None else {"dropout": rng})


# symmetric=True so that both directions of the loss flow back into both towers.
loss_fn = functools.partial(losses.in_batch_softmax_loss, positive_index=jnp.arange(_QUERIES),
                            scale=0.2, symmetric=True)


def _tokens(rng, rows, length):
  ids = rng.integers(1, _CONFIG.vocab_size, size=(rows, length)).astype(np.int32)
  lengths = rng.integers(2, length + 1, size=rows)
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
  return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def batch():
  """(params, query_inputs [8, 8], passage_inputs [16, 12] in the DPR layout)."""
  params = {"query": nn.unbox(init_params(_MODEL, jax.random.PRNGKey(0))),
            "passage": nn.unbox(init_params(_MODEL, jax.random.PRNGKey(1)))}
  rng = np.random.default_rng(0)
  queries = _tokens(rng, _QUERIES, 8)
  positives = _tokens(rng, _QUERIES, 12)
  negatives = jax.tree_util.tree_map(lambda x: x.reshape(_QUERIES, _NEGATIVES, -1),
                                     _tokens(rng, _QUERIES * _NEGATIVES, 12))
  passages, _ = losses.dpr_passage_layout(positives, negatives)
  return params, queries, passages


def full_batch_reference(params, queries, passages, rng=None, chunk_size=None):
  """Plain autodiff through the whole batch.

  Without rng: one forward over all rows. With rng (dropout), the masks depend on how rows are
  grouped, so the forward is run on GradCache's chunks (rows j::num_chunks) with the same
  per-chunk keys; the chunks are re-assembled and everything is still differentiated at once.
  """
  def embed_all(p, inputs, tower):
    if rng is None:
      return embed(p, inputs, None, tower)
    rows = inputs["input_ids"].shape[0]
    num_chunks = rows // chunk_size
    out = [None] * rows
    for j in range(num_chunks):
      index = np.arange(j, rows, num_chunks)
      chunk = jax.tree_util.tree_map(lambda x: x[index], inputs)
      emb = embed(p, chunk, grad_cache.chunk_rng(rng, tower, j), tower)
      for k, row in enumerate(index):
        out[row] = emb[k]
    return jnp.stack(out)

  def total_loss(p):
    return loss_fn(embed_all(p, queries, "query"), embed_all(p, passages, "passage"))

  return jax.value_and_grad(total_loss, has_aux=True)(params)


def tree_max_rel_err(actual, expected):
  """Max over leaves of max|a - b| / max|b|."""
  errors = jax.tree_util.tree_map(
      lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30)),
      actual, expected)
  return max(jax.tree_util.tree_leaves(errors))


def assert_matches(result, reference, tolerance=1e-5):
  ((loss, metrics), grads), ((ref_loss, ref_metrics), ref_grads) = result, reference
  assert abs(float(loss) - float(ref_loss)) <= tolerance * abs(float(ref_loss))
  assert float(metrics["accuracy"]) == float(ref_metrics["accuracy"])
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ref_grads)
  error = tree_max_rel_err(grads, ref_grads)
  assert error <= tolerance, f"GradCache vs full batch: max relative error {error:.2e}"
  # Both towers really receive gradient (a zero gradient would match trivially).
  for tower in ("query", "passage"):
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads[tower])) > 0


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_grad_cache_equals_full_batch(batch, chunk_size):
  params, queries, passages = batch
  result = grad_cache.grad_cache_loss_and_grads(embed, loss_fn, params, queries, passages,
                                                chunk_size=chunk_size, has_aux=True)
  assert_matches(result, full_batch_reference(params, queries, passages))


@pytest.mark.parametrize("chunk_size", [2, 4])
def test_grad_cache_with_dropout_equals_full_batch(batch, chunk_size):
  params, queries, passages = batch
  rng = jax.random.PRNGKey(42)
  result = grad_cache.grad_cache_loss_and_grads(embed, loss_fn, params, queries, passages,
                                                chunk_size=chunk_size, rng=rng, has_aux=True)
  reference = full_batch_reference(params, queries, passages, rng, chunk_size)
  assert_matches(result, reference)
  # Dropout is really on: the deterministic loss differs.
  (deterministic_loss, _), _ = full_batch_reference(params, queries, passages)
  assert abs(float(result[0][0]) - float(deterministic_loss)) > 1e-4


def test_grad_cache_under_jit_on_a_sharded_batch(batch):
  params, queries, passages = batch
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  step = jax.jit(functools.partial(grad_cache.grad_cache_loss_and_grads, embed, loss_fn,
                                   chunk_size=8, has_aux=True),
                 in_shardings=(replicated, rows, rows))
  result = step(params, queries, passages)
  assert_matches(result, full_batch_reference(params, queries, passages))


def test_split_and_merge_chunks_round_trip():
  rows = np.arange(12)[:, None] * np.ones((12, 3))
  chunks = grad_cache.split_chunks({"x": rows}, chunk_size=4)["x"]
  assert chunks.shape == (3, 4, 3)
  np.testing.assert_array_equal(chunks[1, :, 0], [1, 4, 7, 10])  # strided: rows j::num_chunks
  np.testing.assert_array_equal(grad_cache.merge_chunks(chunks), rows)


@pytest.mark.parametrize("chunk_size,match", [
    (3, "query rows \\(8\\) are not divisible by chunk_size=3"),
    (16, "query rows \\(8\\) are not divisible"),
    (0, "positive int"), (2.0, "positive int")])
def test_bad_chunk_size_is_rejected(batch, chunk_size, match):
  params, queries, passages = batch
  with pytest.raises(ValueError, match=match):
    grad_cache.grad_cache_loss_and_grads(embed, loss_fn, params, queries, passages,
                                         chunk_size=chunk_size)
