"""The dual-encoder train step on 8 fake CPU devices: sharding, GradCache, label alignment.

- one step on mesh (4, 2) gives the loss and parameters of the same step on one device;
- GradCache gradients equal full-batch gradients;
- each query's positive stays its own when hard negatives are appended and the passages of
  the global batch are gathered across devices (a NumPy reference over the flattened layout,
  and a batch where every positive is a copy of its query);
- a non-finite loss leaves params and optimizer state untouched and reports finite=0.
"""

import functools

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest

from retrieval_jax import optim, sharding
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, init_params
from retrieval_jax.models.pooling import PoolingConfig
from retrieval_jax.recipes import dual_encoder

_TINY = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_position_embeddings=64, hidden_dropout=0.0,
                      attention_dropout=0.0)
_BATCH, _GROUP, _LQ, _LP = 8, 3, 8, 16


def _loss_config(**overrides):
  defaults = dict(scale=1.0, symmetric=False, grad_cache=False, chunk_size=4)
  return ml_collections.ConfigDict({**defaults, **overrides})


def _batch(seed=0, batch=_BATCH, group=_GROUP):
  rng = np.random.default_rng(seed)
  def ids_and_mask(shape, length):
    ids = rng.integers(1, _TINY.vocab_size, shape + (length,)).astype(np.int32)
    lengths = rng.integers(2, length + 1, shape)
    mask = (np.arange(length) < lengths[..., None]).astype(np.int32)
    return ids * mask, mask
  q_ids, q_mask = ids_and_mask((batch,), _LQ)
  p_ids, p_mask = ids_and_mask((batch, group), _LP)
  return dict(query_input_ids=q_ids, query_attention_mask=q_mask, passage_input_ids=p_ids,
              passage_attention_mask=p_mask)


def _setup(mesh, shared=False, pooling=PoolingConfig(mode="cls"), loss_config=None, lr=1e-2,
           tx=None):
  dual = dual_encoder.DualEncoder(TextEncoder(_TINY, pooling), shared)
  tx = tx or optim.make_optimizer(lr, total_steps=10, warmup_steps=0, weight_decay=0.01,
                                  max_grad_norm=1.0)
  shardings = dual_encoder.state_shardings(dual, tx, mesh)
  tower = jax.tree_util.tree_map(
      np.asarray, nn.meta.unbox(init_params(dual.model, jax.random.PRNGKey(0))))
  state = dual_encoder.init_state(dual, tx, tower, seed=0, shardings=shardings)
  step_fn = functools.partial(dual_encoder.train_step, dual=dual, tx=tx,
                              schedule=optim.make_schedule(lr, 10), dropout=False,
                              loss_config=loss_config or _loss_config())
  step = jax.jit(
      lambda state, batch: step_fn(state, {}, batch),  # a dual encoder has no frozen input
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  return dual, state, step


def _host(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def _max_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _relative_error(actual, expected):
  """||actual - expected|| / ||expected|| over the whole tree (global norms).

  Per-leaf ratios are meaningless for leaves whose true gradient is zero (the attention key
  bias: softmax ignores a constant added to every key), where both sides hold rounding noise.
  """
  diff = optax.global_norm(jax.tree_util.tree_map(lambda a, b: a - b, actual, expected))
  return float(diff / optax.global_norm(expected))


@pytest.mark.parametrize("shared", [False, True])
def test_step_on_mesh_4x2_equals_one_device(shared):
  """Loss, gradients and the updated parameters of one step, (4, 2) vs a single device.

  The parameter comparison uses SGD: Adam's first update is lr * g / (|g| + eps), which turns
  rounding-level gradients (1e-8 on a LayerNorm bias, different in the last bit between the
  two reduction orders) into +-lr steps. The AdamW step's loss and gradients are compared
  instead, and they are what determines every later update.
  """
  batch = _batch()
  meshes = {"4x2": sharding.make_mesh(4, 2), "1": sharding.make_mesh(1, 1, jax.devices()[:1])}
  results = {}
  for name, mesh in meshes.items():
    dual, state, step = _setup(mesh, shared)
    sharded_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    (_, _), grads = jax.jit(lambda p, b: dual_encoder.contrastive_loss_and_grads(
        dual, _loss_config(), p, b, None))(state["params"], sharded_batch)
    _, metrics = step(state, batch)
    _, sgd_state, sgd_step = _setup(mesh, shared, tx=optax.sgd(0.5))
    initial = _host(sgd_state["params"])
    sgd_new, _ = sgd_step(sgd_state, batch)
    results[name] = _host((metrics, grads, sgd_new["params"])) + (initial,)
  (metrics_a, grads_a, params_a, initial), (metrics_b, grads_b, params_b, _) = (
      results["4x2"], results["1"])
  grad_error = _relative_error(grads_a, grads_b)
  print(f"[measured] (4,2) vs 1 device: loss {metrics_a['loss']:.7f} vs {metrics_b['loss']:.7f}, "
        f"gradients relative {grad_error:.2e}, SGD-updated params max abs "
        f"{_max_diff(params_a, params_b):.2e}")
  assert abs(metrics_a["loss"] - metrics_b["loss"]) <= 1e-5
  assert abs(metrics_a["grad_norm"] - metrics_b["grad_norm"]) <= 1e-5 * metrics_b["grad_norm"]
  assert grad_error <= 1e-5
  assert _max_diff(params_a, params_b) <= 1e-5
  assert metrics_a["finite"] == 1.0
  # The step did move the parameters (a no-op step would pass the comparison too).
  assert _max_diff(params_b, initial) > 1e-3


def test_grad_cache_gradients_equal_full_batch():
  mesh = sharding.make_mesh(8, 1)
  batch = jax.device_put(_batch(seed=1), sharding.batch_sharding(mesh))
  dual, state, _ = _setup(mesh)
  grads = {}
  for name, config in {"full": _loss_config(),
                       "cache": _loss_config(grad_cache=True, chunk_size=8)}.items():
    fn = jax.jit(lambda params, batch, config=config: dual_encoder.contrastive_loss_and_grads(
        dual, config, params, batch, None))
    (loss, _), g = fn(state["params"], batch)
    grads[name] = _host((loss, g))
  (loss_full, g_full), (loss_cache, g_cache) = grads["full"], grads["cache"]
  assert abs(loss_full - loss_cache) <= 1e-5 * max(1.0, abs(loss_full))
  error = _relative_error(g_cache, g_full)
  print(f"[measured] GradCache (chunks of 8) vs full batch: relative gradient error {error:.2e}")
  assert error <= 1e-5


def _embeddings(dual, params, batch):
  """(query, flattened passage) embeddings of a batch, float64, dropout off."""
  embed = jax.jit(dual.embed, static_argnums=3)
  query = embed(params, (batch["query_input_ids"], batch["query_attention_mask"]), None, "query")
  flat = lambda x: x.reshape(-1, _LP)
  passage = embed(params, (flat(batch["passage_input_ids"]),
                           flat(batch["passage_attention_mask"])), None, "passage")
  return np.asarray(query, np.float64), np.asarray(passage, np.float64)


def _numpy_loss(query_emb, passage_emb, group, scale):
  logits = scale * query_emb.astype(np.float64) @ passage_emb.astype(np.float64).T
  logits -= logits.max(axis=1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  rows = np.arange(len(query_emb))
  return -np.mean(log_probs[rows, rows * group])


@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2)])
def test_loss_labels_follow_the_flattened_layout(mesh_shape):
  mesh = sharding.make_mesh(*mesh_shape)
  batch = _batch(seed=2)
  dual, state, _ = _setup(mesh)
  config = _loss_config(scale=3.0)
  (loss, _), _ = jax.jit(lambda p, b: dual_encoder.contrastive_loss_and_grads(
      dual, config, p, b, None))(state["params"], jax.device_put(batch,
                                                                 sharding.batch_sharding(mesh)))
  query_emb, passage_emb = _embeddings(dual, _host(state["params"]), batch)
  expected = _numpy_loss(query_emb, passage_emb, _GROUP, 3.0)
  assert abs(float(loss) - expected) <= 1e-5 * max(1.0, abs(expected))


def test_positive_that_copies_its_query_is_always_found():
  """Shared tower, L2-normalised: the positive is the query's own text, so cosine 1 is the
  maximum of each row exactly when the label points at slot 0 of that query's group."""
  mesh = sharding.make_mesh(8, 1)
  batch = _batch(seed=3, batch=16)
  query_ids = np.zeros((16, _LP), np.int32)
  query_mask = np.zeros((16, _LP), np.int32)
  query_ids[:, :_LQ] = batch["query_input_ids"]
  query_mask[:, :_LQ] = batch["query_attention_mask"]
  batch["passage_input_ids"][:, 0] = query_ids
  batch["passage_attention_mask"][:, 0] = query_mask
  dual, state, _ = _setup(mesh, shared=True, pooling=PoolingConfig(mode="mean", normalize=True))
  (loss, metrics), _ = jax.jit(lambda p, b: dual_encoder.contrastive_loss_and_grads(
      dual, _loss_config(scale=20.0), p, b, None))(
          state["params"], jax.device_put(batch, sharding.batch_sharding(mesh)))
  assert float(metrics["accuracy"]) == 1.0
  np.testing.assert_allclose(float(metrics["positive_logit_mean"]), 20.0, rtol=1e-5)
  # And a label shifted by one query would be wrong for every row.
  assert float(loss) < np.log(16 * _GROUP)


def test_non_finite_loss_keeps_params_and_reports_it():
  mesh = sharding.make_mesh(8, 1)
  # A NaN logit scale makes the loss NaN whatever the inputs.
  _, state, step = _setup(mesh, loss_config=_loss_config(scale=float("nan")))
  before = _host(state)
  new_state, metrics = step(state, _batch(seed=4))
  assert float(metrics["finite"]) == 0.0
  after = _host(new_state)
  assert _max_diff(after["params"], before["params"]) == 0.0
  assert _max_diff(after["opt_state"], before["opt_state"]) == 0.0
  assert int(after["step"]) == 1


@pytest.mark.parametrize("in_batch", [True, False])
def test_maxp_batches_and_own_group_loss_on_a_mesh(in_batch):
  """[B, G, N, L] passages (MaxP): on mesh (4, 2) the loss equals a NumPy reference taking each
  document's best non-empty passage; with loss.in_batch=False each query sees only its group."""
  per_doc = 2
  mesh = sharding.make_mesh(4, 2)
  rng = np.random.default_rng(5)
  batch = _batch(seed=5, group=_GROUP * per_doc)
  for key in ("passage_input_ids", "passage_attention_mask"):
    batch[key] = batch[key].reshape(_BATCH, _GROUP, per_doc, _LP)
  empty = rng.random((_BATCH, _GROUP)) < 0.4  # some documents have no second passage
  batch["passage_input_ids"][:, :, 1][empty] = 0
  batch["passage_attention_mask"][:, :, 1][empty] = 0
  dual, state, _ = _setup(mesh)
  config = _loss_config(scale=2.0, in_batch=in_batch)
  (loss, _), _ = jax.jit(lambda p, b: dual_encoder.contrastive_loss_and_grads(
      dual, config, p, b, None))(state["params"], jax.device_put(batch,
                                                                 sharding.batch_sharding(mesh)))
  query_emb, passage_emb = _embeddings(dual, _host(state["params"]), batch)
  flat = lambda x: x.reshape(-1, _LP)
  logits = 2.0 * query_emb @ passage_emb.T                                   # [B, B*G*N]
  valid = flat(batch["passage_attention_mask"])[:, 0] > 0
  allowed = np.broadcast_to(valid, logits.shape).copy()
  if not in_batch:
    allowed &= (np.arange(logits.shape[1])[None] // (_GROUP * per_doc)
                == np.arange(_BATCH)[:, None])
  docs = np.where(allowed, logits, -np.inf).reshape(_BATCH, -1, per_doc).max(-1)
  docs -= docs.max(axis=1, keepdims=True)
  log_probs = docs - np.log(np.exp(docs).sum(axis=1, keepdims=True))
  expected = -np.mean(log_probs[np.arange(_BATCH), np.arange(_BATCH) * _GROUP])
  assert abs(float(loss) - expected) <= 1e-5 * max(1.0, abs(expected))
