"""Tests for the Flax encoder: configs, pooling vs NumPy, dtypes, remat, dropout, logical axes.

Numerical equality with Hugging Face is tested in test_models_hf.py; this file covers the
behaviours of our own modules, with NumPy / PyTorch as references where there is maths.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from retrieval_jax.models import hf
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, abstract_params, init_params
from retrieval_jax.models.pooling import PoolingConfig, PoolingHead, l2_normalize, mean_pool

_TINY = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_position_embeddings=32)
_LOGICAL_AXES = {"vocab", "embed", "position", "token_type", "heads", "kv", "mlp", "embed_out",
                 "projection"}


def _tiny_batch():
  """Two rows: one right-padded, one full."""
  ids = jnp.array([[2, 3, 4, 5, 6, 0, 0, 0], [7, 8, 9, 10, 11, 12, 13, 14]], jnp.int32)
  return ids, (ids > 0).astype(jnp.int32)


def _is_boxed(x):
  return isinstance(x, nn.LogicallyPartitioned)


# Everything below runs eagerly on purpose: XLA:CPU compiles of whole functions cost seconds
# each, while eager primitives are compiled once per shape and shared by all tests.


def _init(model, seed=0):
  return init_params(model, jax.random.PRNGKey(seed))


def _apply(model, method=None):
  def apply(params, ids, mask):
    return model.apply({"params": params}, ids, mask, method=method)
  return apply


@pytest.fixture(scope="module")
def tiny_params():
  """Unboxed params of `_TINY` with an 8-d projection head (a superset of every tiny model's)."""
  return nn.unbox(_init(TextEncoder(_TINY, PoolingConfig("mean", projection_dim=8))))


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden,heads", [(30, 4), (100, 12), (384, 7)])
def test_encoder_config_rejects_hidden_not_divisible_by_heads(hidden, heads):
  with pytest.raises(ValueError, match="divisible"):
    EncoderConfig(hidden_size=hidden, num_heads=heads)


def test_encoder_config_accepts_divisible_and_reports_head_dim():
  assert EncoderConfig(hidden_size=384, num_heads=12).head_dim == 32


@pytest.mark.parametrize("field,value", [("hidden_act", "relu"), ("model_type", "distilbert")])
def test_encoder_config_rejects_unsupported_options(field, value):
  with pytest.raises(ValueError, match=field):
    EncoderConfig(**{field: value})


def test_encoder_config_from_hf_rejects_unsupported_model_type():
  with pytest.raises(ValueError, match="model_type"):
    EncoderConfig.from_hf({"model_type": "distilbert", "vocab_size": 10})


def test_encoder_config_hf_round_trip():
  config = _TINY.replace(model_type="roberta", pad_token_id=1, type_vocab_size=1,
                         hidden_act="gelu_new", layer_norm_eps=1e-5)
  assert EncoderConfig.from_hf(config.to_hf()) == config


@pytest.mark.parametrize("mode", ["max", "CLS", "", "mean_sqrt_len_tokens"])
def test_pooling_config_rejects_bad_modes(mode):
  with pytest.raises(ValueError, match="pooling mode"):
    PoolingConfig(mode=mode)


# --- pooling vs NumPy ----------------------------------------------------------------------------


def _hand_built_hidden():
  """[3, 5, 4] states whose padded positions hold large values (they must not leak in)."""
  rng = np.random.default_rng(0)
  hidden = rng.standard_normal((3, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
  hidden[mask == 0] = 1000.0
  return hidden, mask


def test_cls_pooling_matches_numpy():
  hidden, mask = _hand_built_hidden()
  out = PoolingHead(PoolingConfig("cls")).apply({}, jnp.asarray(hidden), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(out), hidden[:, 0], rtol=0, atol=0)


def test_mean_pooling_matches_numpy():
  hidden, mask = _hand_built_hidden()
  expected = np.stack([hidden[i, mask[i] > 0].mean(axis=0) for i in range(len(hidden))])
  out = PoolingHead(PoolingConfig("mean")).apply({}, jnp.asarray(hidden), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(mean_pool(jnp.asarray(hidden), jnp.asarray(mask))),
                             expected, rtol=1e-6, atol=1e-6)


def test_mean_pooling_all_padding_row_is_zero_not_nan():
  hidden = jnp.ones((2, 3, 4))
  mask = jnp.array([[1, 1, 0], [0, 0, 0]])
  out = np.asarray(PoolingHead(PoolingConfig("mean", normalize=True)).apply({}, hidden, mask))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[1], 0.0)


def test_mean_pooling_of_bfloat16_states_is_float32():
  hidden, mask = _hand_built_hidden()
  out = mean_pool(jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(mask))
  assert out.dtype == jnp.float32


def test_pooler_mode_uses_pooler_output_and_needs_it():
  hidden, mask = _hand_built_hidden()
  pooled = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
  head = PoolingHead(PoolingConfig("pooler"))
  np.testing.assert_array_equal(np.asarray(head.apply({}, hidden, mask, jnp.asarray(pooled))),
                                pooled)
  with pytest.raises(ValueError, match="with_pooler"):
    head.apply({}, hidden, mask, None)


def test_l2_normalize_matches_torch():
  x = np.random.default_rng(2).standard_normal((5, 7)).astype(np.float32)
  x[3] = 0.0  # torch.nn.functional.normalize maps the zero vector to zero.
  expected = torch.nn.functional.normalize(torch.from_numpy(x), dim=-1).numpy()
  out = np.asarray(l2_normalize(jnp.asarray(x)))
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.linalg.norm(out[[0, 1, 2, 4]], axis=-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(out[3], 0.0)


@pytest.mark.parametrize("mode,bias,normalize", [("mean", True, True), ("cls", False, False)])
def test_projection_head_matches_numpy(mode, bias, normalize):
  hidden, mask = _hand_built_hidden()
  head = PoolingHead(PoolingConfig(mode, projection_dim=6, projection_bias=bias,
                                   normalize=normalize))
  variables = nn.unbox(head.init(jax.random.PRNGKey(0), hidden, mask))
  kernel = np.asarray(variables["params"]["projection"]["kernel"])
  assert kernel.shape == (4, 6)
  assert ("bias" in variables["params"]["projection"]) == bias
  pooled = hidden[:, 0] if mode == "cls" else np.stack(
      [hidden[i, mask[i] > 0].mean(axis=0) for i in range(3)])
  expected = pooled @ kernel
  if bias:
    # A zero-initialised bias would hide a missing addition: use a random one.
    variables["params"]["projection"]["bias"] = jnp.arange(6, dtype=jnp.float32) / 10
    expected = expected + np.arange(6, dtype=np.float32) / 10
  if normalize:
    expected = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
  out = np.asarray(head.apply(variables, hidden, mask))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --- logical partitioning -----------------------------------------------------------------------


@pytest.mark.parametrize("pooling", [PoolingConfig("cls"),
                                     PoolingConfig("mean", projection_dim=16, normalize=True)])
def test_every_parameter_has_logical_names_of_its_rank(pooling):
  model = TextEncoder(_TINY, pooling)
  params = _init(model)
  leaves = jax.tree.leaves(params, is_leaf=_is_boxed)
  assert leaves and all(_is_boxed(leaf) for leaf in leaves), "a parameter without axis names"
  for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_boxed)[0]:
    assert len(leaf.names) == leaf.value.ndim, (jax.tree_util.keystr(path), leaf.names)
    assert set(leaf.names) <= _LOGICAL_AXES, (jax.tree_util.keystr(path), leaf.names)
  specs = nn.get_partition_spec(params)
  values = nn.unbox(params)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  value_leaves = jax.tree.leaves(values)
  assert len(spec_leaves) == len(value_leaves)
  for spec, value in zip(spec_leaves, value_leaves):
    assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == value.ndim
  assert ("projection" in params.get("head", {})) == bool(pooling.projection_dim)


def test_abstract_params_match_init_params():
  model = TextEncoder(_TINY, PoolingConfig("mean", projection_dim=8))
  concrete = _init(model)
  abstract = abstract_params(model)
  assert jax.tree.structure(nn.unbox(concrete)) == jax.tree.structure(nn.unbox(abstract))
  for a, c in zip(jax.tree.leaves(abstract, is_leaf=_is_boxed),
                  jax.tree.leaves(concrete, is_leaf=_is_boxed)):
    assert a.names == c.names and a.value.shape == c.value.shape and a.value.dtype == c.value.dtype


def test_parameter_tree_mirrors_hf_bert_model(tiny_params):
  """Our backbone has exactly BertModel's tensors (names via hf.params_to_hf, shapes, count)."""
  params = {"backbone": tiny_params["backbone"]}
  ours = hf.params_to_hf(params["backbone"], _TINY)
  reference = transformers.BertModel(transformers.BertConfig(**{
      k: v for k, v in _TINY.to_hf().items() if k not in ("architectures", "add_pooling_layer")}))
  theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()
            if not k.endswith("position_ids")}
  assert {k: v.shape for k, v in ours.items()} == theirs
  assert sum(np.size(x) for x in jax.tree.leaves(params)) == sum(
      p.numel() for p in reference.parameters())


# --- dtypes, remat, dropout -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  config, params, pooling = hf.load_pretrained(minilm_dir)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
  return config, params, pooling, tokenizer


def test_bfloat16_forward_is_close_to_float32(minilm):
  config, params, pooling, tokenizer = minilm
  texts = ["what is dense retrieval?", "JAX compiles the forward pass with XLA.",
           "a", "Sentence embeddings from mean pooling over the real tokens " * 4]
  batch = tokenizer(texts, padding=True, return_tensors="np")
  ids, mask = batch["input_ids"], batch["attention_mask"]

  def run(dtype):
    model = TextEncoder(config.replace(dtype=dtype), pooling)
    fn = jax.jit(lambda p, i, m: (model.apply({"params": p}, i, m),
                                  model.apply({"params": p}, i, m, method="token_states")))
    return fn(params, ids, mask)

  emb32, states32 = run(jnp.float32)
  emb16, states16 = run(jnp.bfloat16)
  assert states16.dtype == jnp.bfloat16 and states32.dtype == jnp.float32
  assert emb16.dtype == jnp.float32  # The head pools in float32.
  emb16, emb32 = np.asarray(emb16), np.asarray(emb32)
  assert np.all(np.isfinite(emb16))
  cosine = np.sum(emb16 * emb32, axis=-1) / (
      np.linalg.norm(emb16, axis=-1) * np.linalg.norm(emb32, axis=-1))
  print(f"[measured] bfloat16 vs float32 MiniLM pooled cosine min={cosine.min():.6f}")
  assert np.all(cosine >= 0.99), cosine


def _loss(model, params, ids, mask, deterministic=True, rng=None):
  rngs = {"dropout": rng} if rng is not None else {}
  emb = model.apply({"params": params}, ids, mask, deterministic=deterministic, rngs=rngs)
  # Depends on every row and dimension, not symmetric in them.
  return jnp.sum(jnp.sin(emb * jnp.arange(1, emb.shape[-1] + 1)))


@pytest.mark.parametrize("deterministic", [True, False])
def test_remat_gives_same_outputs_and_gradients(deterministic, tiny_params):
  pooling = PoolingConfig("mean", projection_dim=8)
  plain = TextEncoder(_TINY, pooling)
  remat = TextEncoder(_TINY.replace(remat=True), pooling)
  params = tiny_params
  assert jax.tree.structure(params) == jax.tree.structure(nn.unbox(abstract_params(remat)))
  ids, mask = _tiny_batch()
  rng = None if deterministic else jax.random.PRNGKey(7)
  value, grads = jax.value_and_grad(
      lambda p: _loss(plain, p, ids, mask, deterministic, rng))(params)
  value_r, grads_r = jax.value_and_grad(
      lambda p: _loss(remat, p, ids, mask, deterministic, rng))(params)
  np.testing.assert_allclose(value_r, value, rtol=1e-6)
  for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    # Recomputation compiles to other fusions, so float32 rounding differs: on AMD EPYC one
    # element of 1,024 differed by 1.2e-7 at |g| 1e-3; the tolerance grows with the leaf.
    np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=max(1e-7, 1e-6 * float(np.abs(g).max())))
  # The gradients are not trivially zero (a disconnected graph would also "match").
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["backbone"]["layer_0"]))


def test_dropout_deterministic_and_stochastic(tiny_params):
  model = TextEncoder(_TINY.replace(hidden_dropout=0.2, attention_dropout=0.2),
                      PoolingConfig("mean"))
  params = tiny_params
  ids, mask = _tiny_batch()
  key = jax.random.PRNGKey

  def train(p, rng):
    return model.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": rng})

  def evaluate(p, rng):
    return model.apply({"params": p}, ids, mask, deterministic=True, rngs={"dropout": rng})

  base = np.asarray(_apply(model)(params, ids, mask))
  np.testing.assert_array_equal(_apply(model)(params, ids, mask), base)
  np.testing.assert_allclose(evaluate(params, key(3)), base, atol=1e-6)  # rng ignored.
  first, again, other = (np.asarray(train(params, key(s))) for s in (1, 1, 2))
  np.testing.assert_array_equal(first, again)  # Same rng, same mask.
  assert np.abs(first - base).max() > 1e-3
  assert np.abs(first - other).max() > 1e-3
  with pytest.raises(Exception, match="dropout"):
    # Training without a dropout rng is an error, not a silent no-op.
    model.apply({"params": params}, ids, mask, deterministic=False)


def test_zero_dropout_rates_make_training_mode_deterministic(tiny_params):
  model = TextEncoder(_TINY.replace(hidden_dropout=0.0, attention_dropout=0.0),
                      PoolingConfig("cls"))
  params = tiny_params
  ids, mask = _tiny_batch()
  train = model.apply({"params": params}, ids, mask, deterministic=False,
                      rngs={"dropout": jax.random.PRNGKey(0)})
  np.testing.assert_allclose(train, _apply(model)(params, ids, mask), atol=1e-6)


def test_padding_does_not_change_real_tokens(tiny_params):
  """Extra right padding leaves the states of real tokens and the pooled vector unchanged."""
  model = TextEncoder(_TINY, PoolingConfig("mean"))
  params = tiny_params
  ids = jnp.array([[2, 3, 4, 5]], jnp.int32)
  padded = jnp.array([[2, 3, 4, 5, 0, 0, 0, 0, 0, 0]], jnp.int32)
  mask, padded_mask = jnp.ones_like(ids), (padded > 0).astype(jnp.int32)
  states, pooled = _apply(model, method="token_states"), _apply(model)
  np.testing.assert_allclose(states(params, padded, padded_mask)[:, :4],
                             states(params, ids, mask), atol=1e-5)
  np.testing.assert_allclose(pooled(params, padded, padded_mask), pooled(params, ids, mask),
                             atol=1e-5)
