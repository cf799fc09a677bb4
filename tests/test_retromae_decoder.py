"""models/retromae_decoder.py against a NumPy transcription of RetroMAE's decoder layer."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.retromae_decoder import RetroMAEDecoder

CONFIG = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=4,
                       intermediate_size=32, max_position_embeddings=24)


def _layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _reference(p, sentence, tokens, table, visible, eps):
  """`modeling.py`'s forward from the streams on: BertLayerForDecoder(query, key=value=H2)."""
  length = tokens.shape[1]
  query = table[None, :length] + sentence[:, None]
  content = np.concatenate([sentence[:, None], tokens[:, 1:]], axis=1)
  a = p["attention"]

  def heads(x, name):  # [b, l, d] -> [b, h, l, k]
    return np.einsum("bld,dhk->bhlk", x, a[name]["kernel"]) + a[name]["bias"][None, :, None]

  q, k, v = heads(query, "query"), heads(content, "key"), heads(content, "value")
  scores = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
  scores = scores + np.where(visible[:, None] > 0, 0.0, -1e30)  # the extended attention mask
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  context = np.einsum("bhqk,bhkd->bqhd", probs, v)
  out = np.einsum("bqhd,hde->bqe", context, a["output"]["kernel"]) + a["output"]["bias"]
  x = _layer_norm(out + query, a["output_LayerNorm"]["scale"], a["output_LayerNorm"]["bias"], eps)
  m = p["mlp"]
  h = x @ m["intermediate"]["kernel"] + m["intermediate"]["bias"]
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  h = h @ m["output"]["kernel"] + m["output"]["bias"]
  return _layer_norm(h + x, m["output_LayerNorm"]["scale"], m["output_LayerNorm"]["bias"], eps)


def test_decoder_equals_the_reference_layer():
  rng = np.random.default_rng(0)
  b, length, d = 3, 10, CONFIG.hidden_size
  sentence = rng.normal(size=(b, d)).astype(np.float32)
  tokens = rng.normal(size=(b, length, d)).astype(np.float32)
  table = rng.normal(size=(CONFIG.max_position_embeddings, d)).astype(np.float32)
  visible = rng.random((b, length, length)) < 0.5
  visible[:, :, 0] = True  # [CLS] visible
  visible[:, np.arange(length), np.arange(length)] = False
  visible[:, 0, 0] = True  # row 0 keeps one key so its softmax is defined in the reference
  model = RetroMAEDecoder(CONFIG)
  params = model.init(jax.random.PRNGKey(0), sentence, tokens, table, visible)["params"]
  params = jax.tree_util.tree_map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
      nn.meta.unbox(params))  # non-trivial biases and LayerNorm parameters
  got = model.apply({"params": params}, sentence, tokens, table, visible)
  host = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)["layer"]
  want = _reference(host, sentence.astype(np.float64), tokens.astype(np.float64),
                    table.astype(np.float64), visible, CONFIG.layer_norm_eps)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
  # A position hidden from a row does not move that row.
  changed = tokens.copy()
  hidden = np.argwhere(~visible[0, 5])[:, 0]
  hidden = hidden[hidden > 0]
  changed[0, hidden] += 10.0
  again = model.apply({"params": params}, sentence, changed, table, visible)
  np.testing.assert_allclose(np.asarray(again)[0, 5], np.asarray(got)[0, 5], atol=1e-6)


def test_decoder_runs_in_bfloat16():
  config = dataclasses.replace(CONFIG, dtype=jnp.bfloat16)
  model = RetroMAEDecoder(config)
  x = jnp.ones((2, 6, CONFIG.hidden_size))
  visible = jnp.ones((2, 6, 6), bool)
  params = model.init(jax.random.PRNGKey(0), x[:, 0], x, x[0], visible)["params"]
  out = model.apply({"params": params}, x[:, 0], x, x[0], visible)
  assert out.shape == (2, 6, CONFIG.hidden_size) and bool(jnp.isfinite(out).all())
