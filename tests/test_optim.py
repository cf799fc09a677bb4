"""Tests for retrieval_jax.optim against hand formulas and a NumPy AdamW.

The schedule against HF's linear warm-up/decay formula, the decay mask on a tiny TextEncoder,
several optax updates against a NumPy re-implementation of clipping + AdamW with decoupled,
masked weight decay, and the config reader.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from retrieval_jax import optim
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, abstract_params
from retrieval_jax.models.pooling import PoolingConfig

_TINY = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_position_embeddings=64)


def _hf_linear(step, lr, total, warmup):
  """transformers.get_linear_schedule_with_warmup's lr_lambda, times lr."""
  if step < warmup:
    return lr * step / max(1, warmup)
  return lr * max(0.0, (total - step) / max(1, total - warmup))


# --- schedule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("step,expected", [(0, 0.0), (5, 0.5e-3), (10, 1e-3), (55, 0.5e-3),
                                           (100, 0.0), (130, 0.0)])
def test_schedule_values(step, expected):
  schedule = optim.make_schedule(1e-3, total_steps=100, warmup_steps=10)
  assert float(schedule(step)) == pytest.approx(expected, abs=1e-10)
  assert float(schedule(step)) == pytest.approx(_hf_linear(step, 1e-3, 100, 10), abs=1e-10)


@pytest.mark.parametrize("total,warmup", [(100, 0), (100, 100), (7, 3), (1, 0)])
def test_schedule_matches_hf_formula_at_every_step(total, warmup):
  schedule = jax.jit(optim.make_schedule(2e-5, total, warmup))  # traced steps work too
  got = np.array([schedule(step) for step in range(total + 2)])
  expected = [_hf_linear(step, 2e-5, total, warmup) for step in range(total + 2)]
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


def test_warmup_ratio_sets_warmup_steps():
  by_ratio = optim.make_schedule(1.0, total_steps=200, warmup_ratio=0.1)
  assert float(by_ratio(10)) == pytest.approx(0.5)
  assert float(by_ratio(20)) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,match", [(dict(total_steps=0), "total_steps"),
                                          (dict(warmup_steps=11), "warmup_steps"),
                                          (dict(warmup_steps=-1), "warmup_steps"),
                                          (dict(warmup_ratio=1.5), "warmup_ratio")])
def test_schedule_rejects_bad_lengths(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optim.make_schedule(1e-3, **{"total_steps": 10, **kwargs})


# --- decay mask ----------------------------------------------------------------------------------


def test_decay_mask_on_text_encoder():
  model = TextEncoder(_TINY, PoolingConfig("mean", projection_dim=8))
  boxed = abstract_params(model)
  mask = optim.decay_mask(boxed)
  assert mask == optim.decay_mask(nn.unbox(boxed))  # boxed and unboxed agree
  flat = {"/".join(k.key for k in path): decay
          for path, decay in jax.tree_util.tree_leaves_with_path(mask)}
  decayed = {path for path, decay in flat.items() if decay}
  layer = "backbone/layer_0"
  assert decayed == {path for path in flat if path.endswith(("kernel", "embedding"))}
  for path in ("backbone/embeddings/word_embeddings/embedding",
               "backbone/embeddings/position_embeddings/embedding",
               f"{layer}/attention/query/kernel", f"{layer}/mlp/intermediate/kernel",
               "backbone/pooler/kernel", "head/projection/kernel"):
    assert flat[path], path
  for path in ("backbone/embeddings/LayerNorm/scale", "backbone/embeddings/LayerNorm/bias",
               f"{layer}/attention/output_LayerNorm/scale", f"{layer}/mlp/output_LayerNorm/bias",
               f"{layer}/attention/query/bias", f"{layer}/mlp/intermediate/bias",
               "head/projection/bias"):
    assert not flat[path], path


def test_is_decayed_looks_at_norm_modules_not_just_leaf_names():
  assert not optim.is_decayed(("encoder", "final_layer_norm", "weight"))
  assert not optim.is_decayed(("LayerNorm_0", "gamma"))
  assert optim.is_decayed(("normalizer_mlp", "kernel"))


# --- updates vs NumPy ----------------------------------------------------------------------------


def _tiny_params(rng):
  return {"dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))},
          "LayerNorm": {"scale": 1 + rng.normal(size=(4,)), "bias": rng.normal(size=(4,))},
          "embed": {"embedding": rng.normal(size=(5, 4))}}


def _numpy_adamw(params, grads_per_step, schedule, weight_decay, max_grad_norm, b1, b2, eps):
  """Clip to the global norm, Adam moments, bias correction, decoupled masked decay."""
  params = jax.tree.map(np.copy, params)
  mask = optim.decay_mask(params)
  mu = jax.tree.map(np.zeros_like, params)
  nu = jax.tree.map(np.zeros_like, params)
  for step, grads in enumerate(grads_per_step):
    norm = np.sqrt(sum(np.sum(g ** 2) for g in jax.tree.leaves(grads)))
    if max_grad_norm and norm > max_grad_norm:
      grads = jax.tree.map(lambda g: g * max_grad_norm / norm, grads)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g ** 2, nu, grads)
    lr, t = _hf_linear(step, *schedule), step + 1

    def update(p, m, v, decay):
      adam = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
      return p - lr * (adam + (weight_decay * p if decay else 0.0))

    params = jax.tree.map(update, params, mu, nu, mask)
  return params


@pytest.mark.parametrize("max_grad_norm", [None, 0.5, 1e6])
def test_updates_match_numpy_adamw(max_grad_norm):
  rng = np.random.default_rng(0)
  params = _tiny_params(rng)
  # Step 1's gradient is large, so a 0.5 threshold clips it while 1e6 never does.
  grads_per_step = [jax.tree.map(lambda p: scale * rng.normal(size=p.shape), params)
                    for scale in (0.1, 5.0, 0.3, 1.0)]
  lr, total, warmup = 0.05, 10, 2
  hyper = dict(weight_decay=0.1, max_grad_norm=max_grad_norm, b1=0.8, b2=0.95, eps=1e-6)
  optimizer = optim.make_optimizer(lr, total, warmup, **hyper)

  ours = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = optimizer.init(ours)
  for grads in grads_per_step:
    updates, state = optimizer.update(jax.tree.map(jnp.float32, grads), state, ours)
    ours = optax.apply_updates(ours, updates)
  expected = _numpy_adamw(params, grads_per_step, (lr, total, warmup), **hyper)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), ours, expected)
  # The LayerNorm and bias leaves moved by Adam alone: no decay pulled them towards 0.
  without_decay = _numpy_adamw(params, grads_per_step, (lr, total, warmup),
                               **{**hyper, "weight_decay": 0.0})
  np.testing.assert_allclose(ours["LayerNorm"]["scale"], without_decay["LayerNorm"]["scale"],
                             atol=1e-6)
  assert not np.allclose(ours["dense"]["kernel"], without_decay["dense"]["kernel"], atol=1e-4)


def test_clipping_engages_only_above_max_grad_norm():
  params = {"w": jnp.zeros(4)}
  optimizer = optim.make_optimizer(1e-3, 10, max_grad_norm=1.0, b1=0.9)
  for grad, norm_after_clip in ((jnp.array([3.0, 4.0, 0.0, 0.0]), 1.0),  # norm 5 -> 1
                                (jnp.array([0.3, 0.4, 0.0, 0.0]), 0.5)):  # norm 0.5 kept
    _, state = optimizer.update({"w": grad}, optimizer.init(params), params)
    first_moment = optax.tree_utils.tree_get(state, "mu")["w"]  # (1 - b1) * clipped grad
    np.testing.assert_allclose(np.linalg.norm(first_moment) / 0.1, norm_after_clip, rtol=1e-6)
    np.testing.assert_allclose(first_moment / np.linalg.norm(first_moment),
                               grad / np.linalg.norm(grad), rtol=1e-6)  # direction kept


def test_boxed_params_update_like_unboxed():
  boxed = {"dense": {"kernel": nn.LogicallyPartitioned(jnp.ones((2, 2)), ("embed", "mlp")),
                     "bias": nn.LogicallyPartitioned(jnp.ones(2), ("mlp",))}}
  grads = jax.tree.map(lambda x: 0.5 * x, boxed)
  optimizer = optim.make_optimizer(0.1, 10, weight_decay=0.5, max_grad_norm=1.0)
  boxed_updates, _ = optimizer.update(grads, optimizer.init(boxed), boxed)
  plain, plain_grads = nn.unbox(boxed), nn.unbox(grads)
  plain_updates, _ = optimizer.update(plain_grads, optimizer.init(plain), plain)
  jax.tree.map(np.testing.assert_allclose, nn.unbox(boxed_updates), plain_updates)
  assert not np.allclose(plain_updates["dense"]["kernel"][0, 0], plain_updates["dense"]["bias"][0])


# --- config --------------------------------------------------------------------------------------


def _optim_config(**changes):
  values = {"lr": 0.05, "warmup_steps": 2, "weight_decay": 0.1, "max_grad_norm": 0.5, "b1": 0.8,
            "b2": 0.95, "eps": 1e-6}
  values.update(changes)
  return ml_collections.ConfigDict({k: v for k, v in values.items() if v is not None})


def test_optimizer_from_config_equals_make_optimizer():
  params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
  grads = jax.tree.map(lambda x: 2.0 * x, params)
  from_config = optim.optimizer_from_config(_optim_config(), total_steps=10)
  direct = optim.make_optimizer(0.05, 10, 2, weight_decay=0.1, max_grad_norm=0.5, b1=0.8,
                                b2=0.95, eps=1e-6)
  state_a, state_b = from_config.init(params), direct.init(params)
  for _ in range(3):  # step 0 has lr 0 (warm-up), so compare a few steps
    updates_a, state_a = from_config.update(grads, state_a, params)
    updates_b, state_b = direct.update(grads, state_b, params)
    jax.tree.map(np.testing.assert_array_equal, updates_a, updates_b)
  schedule = optim.schedule_from_config(_optim_config(warmup_steps=None, warmup_ratio=0.5), 10)
  assert float(schedule(5)) == pytest.approx(0.05)


def test_optimizer_from_config_defaults_from_a_plain_dict():
  optimizer = optim.optimizer_from_config({"lr": 1e-3}, total_steps=5)
  params = {"w": jnp.ones(3)}
  updates, _ = optimizer.update({"w": jnp.ones(3)}, optimizer.init(params), params)
  np.testing.assert_allclose(updates["w"], -1e-3 * np.ones(3), rtol=1e-4)  # no warm-up, no decay


@pytest.mark.parametrize("changes,key", [({"warmup_ratio": 0.1}, "optim.warmup_ratio"),
                                         ({"lr": None}, "optim.lr")])
def test_optimizer_from_config_rejects_bad_keys(changes, key):
  with pytest.raises(ValueError, match=key):
    optim.optimizer_from_config(_optim_config(**changes), total_steps=10)


def test_lamb_matches_numpy_reference():
  """LAMB (ANCE's optimizer): Adam direction plus decay, rescaled per tensor by ||w|| / ||u||."""
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=4), jnp.float32)}}
  lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.99, 1e-6
  optimizer = optim.optimizer_from_config(
      _optim_config(name="lamb", lr=lr, warmup_steps=0, weight_decay=wd, max_grad_norm=None,
                    b1=b1, b2=b2, eps=eps), total_steps=1000)
  state = optimizer.init(params)
  ref = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
  m = jax.tree.map(np.zeros_like, ref)
  v = jax.tree.map(np.zeros_like, ref)
  current = params
  for t in range(1, 4):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), current)
    updates, state = optimizer.update(grads, state, current)
    current = optax.apply_updates(current, updates)
    rate = lr * (1000 - (t - 1)) / 1000  # linear decay, evaluated at the updates already done
    for name in ("kernel", "bias"):
      g = np.asarray(grads["dense"][name], np.float64)
      w = ref["dense"][name]
      m["dense"][name] = b1 * m["dense"][name] + (1 - b1) * g
      v["dense"][name] = b2 * v["dense"][name] + (1 - b2) * g * g
      u = (m["dense"][name] / (1 - b1 ** t)) / (np.sqrt(v["dense"][name] / (1 - b2 ** t)) + eps)
      if name == "kernel":  # biases are not decayed
        u = u + wd * w
      trust = np.linalg.norm(w) / np.linalg.norm(u)
      ref["dense"][name] = w - rate * trust * u
    for name in ("kernel", "bias"):
      np.testing.assert_allclose(np.asarray(current["dense"][name]), ref["dense"][name],
                                 rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_name_is_rejected():
  with pytest.raises(ValueError, match="optim.name"):
    optim.optimizer_from_config(_optim_config(name="adagrad"), total_steps=10)


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_sgd_matches_numpy(max_grad_norm):
  """p <- p - lr_t * (g_clipped + wd * p on decayed leaves): linear in the gradient."""
  rng = np.random.default_rng(1)
  params = _tiny_params(rng)
  grads_per_step = [jax.tree.map(lambda p: scale * rng.normal(size=p.shape), params)
                    for scale in (0.1, 5.0, 0.3)]
  lr, total, warmup, weight_decay = 0.05, 10, 2, 0.1
  optimizer = optim.make_optimizer(lr, total, warmup, weight_decay=weight_decay,
                                   max_grad_norm=max_grad_norm, name="sgd")
  ours = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = optimizer.init(ours)
  for grads in grads_per_step:
    updates, state = optimizer.update(jax.tree.map(jnp.float32, grads), state, ours)
    ours = optax.apply_updates(ours, updates)
  expected = jax.tree.map(np.copy, params)
  mask = optim.decay_mask(params)
  for step, grads in enumerate(grads_per_step):
    norm = np.sqrt(sum(np.sum(g ** 2) for g in jax.tree.leaves(grads)))
    if max_grad_norm and norm > max_grad_norm:
      grads = jax.tree.map(lambda g: g * max_grad_norm / norm, grads)
    rate = _hf_linear(step, lr, total, warmup)
    expected = jax.tree.map(lambda p, g, d: p - rate * (g + (weight_decay * p if d else 0.0)),
                            expected, grads, mask)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), ours, expected)


def test_constant_schedule_after_warmup():
  schedule = optim.make_schedule(3e-6, total_steps=100, warmup_steps=10, decay="constant")
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(1.5e-6)
  assert [float(schedule(s)) for s in (10, 50, 100, 500)] == [pytest.approx(3e-6)] * 4
  flat = optim.make_schedule(3e-6, total_steps=100, decay="constant")
  assert float(flat(0)) == pytest.approx(3e-6)
  with pytest.raises(ValueError, match="optim.decay"):
    optim.make_schedule(1e-3, total_steps=10, decay="cosine")
  tx = optim.optimizer_from_config({"lr": 1.0, "decay": "constant", "warmup_steps": 0}, 5)
  assert float(optim.schedule_from_config({"lr": 1.0, "decay": "constant"}, 5)(4)) == 1.0
  assert tx is not None
