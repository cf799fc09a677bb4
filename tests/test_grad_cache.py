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
from retrieval_jax.grad_cache import TOWERS
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, init_params
from retrieval_jax.models.pooling import PoolingConfig

_CONFIG = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
_MODEL = TextEncoder(_CONFIG, PoolingConfig(mode="cls"))
_QUERIES, _NEGATIVES = 8, 1
# Compile time dominates these tests (XLA:CPU, a few ms of compute each); LLVM's expensive passes
# buy nothing at this size. Reference and GradCache are compiled alike.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


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
  # One jitted init for both towers: eager Flax init dispatches (and compiles) op by op.
  init = jax.jit(lambda key: nn.unbox(init_params(_MODEL, key)), compiler_options=_FAST_COMPILE)
  params = {"query": init(jax.random.PRNGKey(0)), "passage": init(jax.random.PRNGKey(1))}
  rng = np.random.default_rng(0)
  queries = _tokens(rng, _QUERIES, 8)
  positives = _tokens(rng, _QUERIES, 12)
  negatives = jax.tree_util.tree_map(lambda x: x.reshape(_QUERIES, _NEGATIVES, -1),
                                     _tokens(rng, _QUERIES * _NEGATIVES, 12))
  passages, _ = losses.dpr_passage_layout(positives, negatives)
  return params, queries, passages


def full_batch_reference(params, queries, passages, rng=None, chunk_size=None, *,
                         embed_fn=embed, loss=loss_fn):
  """Plain autodiff of the whole batch's loss (no gradient cache).

  Without rng: one forward over all rows. With rng (dropout) the masks depend on how rows are
  grouped, so the forward runs on GradCache's row groups (rows j::num_chunks, written out here
  independently) with the same per-chunk keys, under a differentiated `lax.map`.
  """
  def embed_all(p, inputs, tower):
    if rng is None:
      return embed_fn(p, inputs, None, tower)
    rows = grad_cache.num_rows(inputs)
    num_chunks = rows // chunk_size
    groups = np.arange(rows).reshape(chunk_size, num_chunks).T  # groups[j] = rows j::num_chunks
    keys = jnp.stack([grad_cache.chunk_rng(rng, tower, j) for j in range(num_chunks)])
    chunked = jax.tree_util.tree_map(lambda x: x[groups], inputs)
    emb = jax.lax.map(lambda c: embed_fn(p, c[0], c[1], tower), (chunked, keys))
    return emb.reshape(rows, -1)[np.argsort(groups.reshape(-1))]

  def total_loss(p):
    return loss(embed_all(p, queries, "query"), embed_all(p, passages, "passage"))

  return jax.value_and_grad(total_loss, has_aux=True)(params)


def tree_max_rel_err(actual, expected, floor=1e-5):
  """Max over leaves of max|a - b| / max|b|.

  A leaf whose true gradient is 0 (e.g. attention key biases: softmax ignores them) holds only
  rounding noise, so each denominator is at least `floor` times the largest gradient anywhere.
  """
  scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree_util.tree_leaves(expected))
  errors = jax.tree_util.tree_map(
      lambda a, b: float(jnp.max(jnp.abs(a - b))) / max(float(jnp.max(jnp.abs(b))),
                                                         floor * scale), actual, expected)
  return max(jax.tree_util.tree_leaves(errors))


def assert_matches(result, reference, tolerance=1e-5):
  ((loss, metrics), grads), ((ref_loss, ref_metrics), ref_grads) = result, reference
  assert abs(float(loss) - float(ref_loss)) <= tolerance * abs(float(ref_loss))
  assert float(metrics["accuracy"]) == float(ref_metrics["accuracy"])
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ref_grads)
  error = tree_max_rel_err(grads, ref_grads)
  print(f"GradCache vs full batch: loss {float(loss):.6f}, max relative gradient error {error:.2e}")
  assert error <= tolerance, f"GradCache vs full batch: max relative error {error:.2e}"
  # Both towers really receive gradient (a zero gradient would match trivially).
  for tower in ("query", "passage"):
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads[tower])) > 0


def jit_grad_cache(chunk_size, rng=None, **jit_kwargs):
  return jax.jit(functools.partial(grad_cache.grad_cache_loss_and_grads, embed, loss_fn,
                                   chunk_size=chunk_size, rng=rng, has_aux=True),
                 compiler_options=_FAST_COMPILE, **jit_kwargs)


@pytest.fixture(scope="module")
def reference(batch):
  return jax.jit(full_batch_reference, compiler_options=_FAST_COMPILE)(*batch)


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_grad_cache_equals_full_batch_under_jit(batch, reference, chunk_size):
  assert_matches(jit_grad_cache(chunk_size)(*batch), reference)


def test_grad_cache_with_dropout_equals_full_batch(batch, reference):
  # An rbg key draws its bits in one XLA op: far cheaper to compile than threefry's hash (the
  # legacy threefry keys are covered by the small dense model below).
  rng = jax.random.key(42, impl="rbg")
  result = jit_grad_cache(4, rng)(*batch)
  expected = jax.jit(full_batch_reference, static_argnums=4,
                     compiler_options=_FAST_COMPILE)(*batch, rng, 4)
  assert_matches(result, expected)
  # Dropout is really on: the deterministic loss differs.
  assert abs(float(result[0][0]) - float(reference[0][0])) > 1e-4


def test_grad_cache_on_a_sharded_batch(batch, reference):
  """Rows split over 8 devices; chunk_size 8 keeps every chunk spread over all of them."""
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  result = jit_grad_cache(8, in_shardings=(replicated, rows, rows))(*batch)
  assert_matches(result, reference)


def dense_embed(params, inputs, rng, tower):
  """A one-layer tower with hand-written dropout: cheap to compile, same contract as `embed`."""
  hidden = jnp.tanh(inputs["x"] @ params[tower])
  if rng is not None:
    hidden = jnp.where(jax.random.bernoulli(rng, 0.8, hidden.shape), hidden / 0.8, 0.0)
  return hidden


def test_dense_towers_with_legacy_keys_and_bfloat16_params():
  rng = np.random.default_rng(1)
  params = {tower: jnp.asarray(rng.normal(size=(6, 5)), jnp.float32) for tower in TOWERS}
  queries = {"x": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}
  passages = {"x": jnp.asarray(rng.normal(size=(12, 6)), jnp.float32)}
  loss = functools.partial(losses.in_batch_softmax_loss, positive_index=jnp.arange(4))
  key = jax.random.PRNGKey(3)  # a raw uint32[2] threefry key
  step = jax.jit(lambda p, q, d: grad_cache.grad_cache_loss_and_grads(
      dense_embed, lambda a, b: loss(a, b)[0], p, q, d, chunk_size=2, rng=key),
                 compiler_options=_FAST_COMPILE)
  loss_value, grads = step(params, queries, passages)
  (expected_loss, _), expected_grads = jax.jit(
      lambda p, q, d: full_batch_reference(p, q, d, key, 2, embed_fn=dense_embed, loss=loss),
      compiler_options=_FAST_COMPILE)(params, queries, passages)
  assert abs(float(loss_value) - float(expected_loss)) <= 1e-6 * float(expected_loss)
  assert tree_max_rel_err(grads, expected_grads) <= 1e-5
  # bfloat16 parameters: gradients come back in bfloat16, summed in float32 on the way.
  half_grads = step(jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params),
                    queries, passages)[1]
  assert all(g.dtype == jnp.bfloat16 for g in jax.tree_util.tree_leaves(half_grads))
  assert tree_max_rel_err(half_grads, expected_grads) <= 5e-2


def test_chunk_keys_differ_by_tower_and_chunk():
  key = jax.random.PRNGKey(0)
  keys = {(tower, j): tuple(np.asarray(grad_cache.chunk_rng(key, tower, j)))
          for tower in TOWERS for j in range(3)}
  assert len(set(keys.values())) == 6
  assert grad_cache.chunk_rng(None, "query", 0) is None


def test_split_and_merge_chunks_round_trip():
  rows = np.arange(12)[:, None] * np.ones((12, 3))
  chunks = grad_cache.split_chunks({"x": rows}, chunk_size=4)["x"]
  assert chunks.shape == (3, 4, 3)
  np.testing.assert_array_equal(chunks[1, :, 0], [1, 4, 7, 10])  # strided: rows j::num_chunks
  np.testing.assert_array_equal(grad_cache.merge_chunks(chunks), rows)


@pytest.mark.parametrize("chunk_size,match", [
    (3, "query rows \\(8\\) are not divisible by chunk_size=3"),
    (16, "query rows \\(8\\) are not divisible"),
    (8, "passage rows \\(12\\) are not divisible by chunk_size=8"),
    (0, "positive int"), (2.0, "positive int")])
def test_bad_chunk_size_is_rejected(batch, chunk_size, match):
  params, queries, passages = batch
  passages = jax.tree_util.tree_map(lambda x: x[:12], passages)
  with pytest.raises(ValueError, match=match):
    grad_cache.grad_cache_loss_and_grads(embed, loss_fn, params, queries, passages,
                                         chunk_size=chunk_size)


def test_inputs_with_different_row_counts_are_rejected(batch):
  params, queries, passages = batch
  ragged = dict(queries, attention_mask=queries["attention_mask"][:4])
  with pytest.raises(ValueError, match="disagree on the number of rows"):
    grad_cache.grad_cache_loss_and_grads(embed, loss_fn, params, ragged, passages, chunk_size=2)
