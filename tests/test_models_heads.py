"""Encoder outputs and heads against transformers: every layer's hidden states, the MLM head
(load from and export to *ForMaskedLM), the token and MLP heads, cross-attention masks."""

import math
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from retrieval_jax.models import hf
from retrieval_jax.models.encoder import TextEncoder, init_params
from retrieval_jax.models.heads import MLPProjectionConfig, TokenProjectionConfig
from retrieval_jax.models.transformer import Attention, TransformerBlock, mask_bias


def _tiny(family: str, hidden_act: str = "gelu"):
  shape = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=64, hidden_act=hidden_act)
  torch.manual_seed(3)
  if family == "bert":
    model = transformers.BertForMaskedLM(transformers.BertConfig(**shape))
  else:
    model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(pad_token_id=1, **shape))
  with torch.no_grad():  # away from the zero/one init so that every weight matters
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model.eval()


def _batch(pad_id: int):
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 99, size=(3, 11)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  mask[2, 4:] = 0
  ids[mask == 0] = pad_id
  return ids, mask


@pytest.fixture(scope="module", params=["bert", "roberta"])
def masked_lm(request, tmp_path_factory):
  family = request.param
  model = _tiny(family, "gelu_new" if family == "bert" else "gelu")
  directory = tmp_path_factory.mktemp(f"{family}_mlm")
  model.save_pretrained(directory)
  return family, model, directory


def _ours(directory, **kwargs):
  config, params, _ = hf.load_pretrained(directory, mlm_head=True)
  return TextEncoder(config, mlm_head=True, **kwargs), config, params


def test_hidden_states_and_mlm_logits_match_transformers(masked_lm):
  family, model, directory = masked_lm
  encoder, config, params = _ours(directory)
  ids, mask = _batch(config.pad_token_id)
  with torch.no_grad():
    ref = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                attention_mask=torch.as_tensor(mask, dtype=torch.long),
                output_hidden_states=True)
  out = encoder.apply({"params": params}, ids, mask, output_hidden_states=True,
                      method=TextEncoder.outputs)
  logits = encoder.apply({"params": params}, out.last_hidden_state,
                         method=TextEncoder.mlm_logits)
  real = mask.astype(bool)
  assert len(out.hidden_states) == len(ref.hidden_states) == config.num_layers + 1
  layer_diffs = [float(np.abs(np.asarray(ours) - theirs.numpy())[real].max())
                 for ours, theirs in zip(out.hidden_states, ref.hidden_states)]
  logit_diff = float(np.abs(np.asarray(logits) - ref.logits.numpy())[real].max())
  print(f"[measured] {family}: hidden states max abs {max(layer_diffs):.2g}, "
        f"MLM logits {logit_diff:.2g}")
  assert max(layer_diffs) < 1e-5
  assert logit_diff < 1e-4
  np.testing.assert_array_equal(out.hidden_states[-1], out.last_hidden_state)


def test_mlm_head_export_round_trips(masked_lm, tmp_path):
  family, model, directory = masked_lm
  encoder, config, params = _ours(directory)
  hf.save_pretrained(tmp_path / "out", config, params)
  reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
  assert type(reloaded) is type(model)
  ids, mask = _batch(config.pad_token_id)
  tensors = dict(input_ids=torch.as_tensor(ids, dtype=torch.long),
                 attention_mask=torch.as_tensor(mask, dtype=torch.long))
  with torch.no_grad():
    np.testing.assert_allclose(reloaded(**tensors).logits.numpy(),
                               model(**tensors).logits.numpy(), atol=1e-5)
  _, again, _ = hf.load_pretrained(tmp_path / "out", mlm_head=True)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)
  # The encoder part is still an AutoModel checkpoint.
  base = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
  with torch.no_grad():
    np.testing.assert_allclose(base(**tensors).last_hidden_state.numpy(),
                               reloaded.base_model(**tensors).last_hidden_state.numpy(),
                               atol=1e-6)


def test_checkpoint_without_mlm_head_is_an_error(tmp_path):
  model = transformers.BertModel(transformers.BertConfig(
      vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
      intermediate_size=64))
  model.save_pretrained(tmp_path)
  with pytest.raises(hf.WeightMismatchError, match="cls.predictions.bias"):
    hf.load_pretrained(tmp_path, mlm_head=True)


def test_missing_mlm_head_can_start_random_and_is_logged(tmp_path, caplog):
  import ml_collections  # pylint: disable=g-import-not-at-top

  from retrieval_jax.models import registry  # pylint: disable=g-import-not-at-top
  model = transformers.BertModel(transformers.BertConfig(
      vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
      intermediate_size=64))
  model.save_pretrained(tmp_path)
  config = ml_collections.ConfigDict({"name": str(tmp_path), "pooling": "cls",
                                      "normalize": "false", "dtype": "float32",
                                      "mlm_head": True, "missing_mlm_head": "random"})
  spec = registry.build(config)
  with caplog.at_level("WARNING"):
    params = spec.initial_params(jax.random.PRNGKey(0))
  assert "has no masked-LM head" in caplog.text
  assert params["mlm_head"]["bias"].shape == (99,)
  word = model.embeddings.word_embeddings.weight.detach().numpy()
  np.testing.assert_array_equal(
      params["backbone"]["embeddings"]["word_embeddings"]["embedding"], word)
  config.missing_mlm_head = "error"
  with pytest.raises(hf.WeightMismatchError, match="no masked-LM head"):
    registry.build(config).initial_params(jax.random.PRNGKey(0))
  config.missing_mlm_head = "maybe"
  with pytest.raises(ValueError, match="model.missing_mlm_head"):
    registry.build(config)


def test_untied_decoder_is_refused(masked_lm, tmp_path):
  family, _, directory = masked_lm
  tensors = hf.read_safetensors(directory)
  name = "cls.predictions.decoder.weight" if family == "bert" else "lm_head.decoder.weight"
  embeddings = [n for n in tensors if n.endswith("embeddings.word_embeddings.weight")][0]
  tensors[name] = tensors[embeddings] + 1.0
  shutil.copy(directory / "config.json", tmp_path / "config.json")
  safetensors.numpy.save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(hf.WeightMismatchError, match="not tied"):
    hf.load_pretrained(tmp_path, mlm_head=True)


def test_token_and_mlp_heads(masked_lm):
  _, _, directory = masked_lm
  config, params, _ = hf.load_pretrained(directory)
  model = TextEncoder(config, token_projection=TokenProjectionConfig(dim=8),
                      mlp_projection=MLPProjectionConfig(widths=(16, 4)))
  boxed = init_params(model, jax.random.PRNGKey(1))
  names = jax.tree_util.tree_map(lambda box: box.names, boxed["token_head"],
                                 is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert names["linear"]["kernel"] == ("embed", "projection")
  heads = nn.meta.unbox({k: v for k, v in boxed.items() if k in ("token_head", "mlp_head")})
  ids, mask = _batch(config.pad_token_id)
  out = model.apply({"params": {**params, **heads}}, ids, mask, method=TextEncoder.outputs)
  tokens = np.asarray(out.token_vectors)
  np.testing.assert_allclose(np.linalg.norm(tokens[mask == 1], axis=-1), 1.0, rtol=1e-5)
  assert not tokens[mask == 0].any()
  kernel = np.asarray(heads["token_head"]["linear"]["kernel"])
  expected = np.asarray(out.last_hidden_state) @ kernel
  expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
  np.testing.assert_allclose(tokens[mask == 1], expected[mask == 1], atol=1e-5)
  w0, b0 = (np.asarray(heads["mlp_head"]["dense_0"][k]) for k in ("kernel", "bias"))
  w1, b1 = (np.asarray(heads["mlp_head"]["dense_1"][k]) for k in ("kernel", "bias"))
  h = np.asarray(out.embedding) @ w0 + b0
  h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
  np.testing.assert_allclose(np.asarray(out.projection), h @ w1 + b1, atol=1e-5)


def test_full_mask_and_separate_key_value_stream(masked_lm):
  """A [b, q, k] mask equals the padding mask it spells out; a causal mask hides the future;
  queries from one stream attend over another (RetroMAE's enhanced decoding)."""
  _, _, directory = masked_lm
  config, params, _ = hf.load_pretrained(directory)
  encoder = TextEncoder(config)
  ids, mask = _batch(config.pad_token_id)
  full = np.broadcast_to(mask[:, None, :], (3, 11, 11))
  padded = encoder.apply({"params": params}, ids, mask, method=TextEncoder.token_states)
  spelled = encoder.apply({"params": params}, ids, full, method=TextEncoder.token_states)
  np.testing.assert_array_equal(padded, spelled)

  block = TransformerBlock(config.replace(hidden_dropout=0.0, attention_dropout=0.0))
  layer = params["backbone"]["layer_0"]
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 5, 32)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(2, 7, 32)), jnp.float32)
  causal = np.tril(np.ones((7, 7), np.int32))[None].repeat(2, 0)
  seq = block.apply({"params": layer}, kv, mask_bias(causal), True)
  changed = kv.at[:, 4:].set(0.0)
  seq_changed = block.apply({"params": layer}, changed, mask_bias(causal), True)
  np.testing.assert_allclose(seq[:, :4], seq_changed[:, :4], atol=1e-6)  # past unaffected
  cross = block.apply({"params": layer}, x, mask_bias(np.ones((2, 7), np.int32)), True, kv)
  assert cross.shape == x.shape
  # Against the same attention written out in NumPy (one head's maths, all heads).
  att = {k: np.asarray(v["kernel"]) for k, v in layer["attention"].items()
         if k in ("query", "key", "value")}
  bias = {k: np.asarray(v["bias"]) for k, v in layer["attention"].items()
          if k in ("query", "key", "value")}
  q = np.einsum("bld,dhk->bhlk", x, att["query"]) + bias["query"][None, :, None]
  k = np.einsum("bld,dhk->bhlk", kv, att["key"]) + bias["key"][None, :, None]
  v = np.einsum("bld,dhk->bhlk", kv, att["value"]) + bias["value"][None, :, None]
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(config.head_dim)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  context = (weights @ v).transpose(0, 2, 1, 3).reshape(2, 5, 32)
  out = layer["attention"]["output"]
  attended = context @ np.asarray(out["kernel"]).reshape(32, 32) + np.asarray(out["bias"])
  ln = layer["attention"]["output_LayerNorm"]
  h = attended + np.asarray(x)
  h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + config.layer_norm_eps)
  h = h * np.asarray(ln["scale"]) + np.asarray(ln["bias"])
  attn = Attention(config).apply({"params": layer["attention"]}, x, kv,
                                 mask_bias(np.ones((2, 7), np.int32)), True)
  np.testing.assert_allclose(np.asarray(attn), h, atol=1e-5)
