"""Llama weights into `models/llama.py` params: HF safetensors directories and GGUF files.

Both paths first produce HF's state dict (`model.layers.N.self_attn.q_proj.weight`, PyTorch's
[out, in] layout) as float32 NumPy, then one function stacks it into the scanned Flax tree,
so a GGUF file and the safetensors it was converted from give the same params.

GGUF (llama.cpp's format, read with the `gguf` package): every tensor is dequantised by its
stored type (`gguf.quants.dequantize`: Q4_1, Q8_0, F16, ...), and the query/key rows are put
back in HF's order: llama.cpp's converter permutes them for its interleaved rotary layout.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from retrieval_jax.models.llama import LlamaConfig


def config_from_hf(hf_config: Mapping[str, Any], dtype=jnp.float32) -> LlamaConfig:
  """A `LlamaConfig` from a HF `config.json` dict of a Llama-family model."""
  arch = hf_config.get("model_type", "llama")
  if arch != "llama" or hf_config.get("attention_bias") or hf_config.get("mlp_bias"):
    raise ValueError(f"model_type={arch!r} (attention_bias={hf_config.get('attention_bias')}, "
                     f"mlp_bias={hf_config.get('mlp_bias')}) is not a Llama model without biases")
  if hf_config.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act={hf_config['hidden_act']!r}: only silu (SwiGLU) is supported")
  # transformers v5 writes `rope_parameters`; v4 wrote `rope_theta` and `rope_scaling`.
  rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise ValueError(f"rope parameters {rope} are not supported (default rotary only)")
  theta = rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))
  heads = hf_config["num_attention_heads"]
  return LlamaConfig(
      vocab_size=hf_config["vocab_size"], hidden_size=hf_config["hidden_size"],
      intermediate_size=hf_config["intermediate_size"],
      num_layers=hf_config["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf_config.get("num_key_value_heads") or heads,
      head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
      rope_theta=float(theta),
      rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
      tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
      dtype=dtype, param_dtype=dtype)


def params_from_state(state: Mapping[str, np.ndarray], config: LlamaConfig) -> dict:
  """The Flax params of `llama.Llama` from a HF `LlamaForCausalLM` state dict."""
  def get(name):
    if name not in state:
      raise KeyError(f"weight {name!r} missing from the checkpoint")
    return np.asarray(state[name], dtype=np.float32)

  c = config
  layer_names = [f"model.layers.{i}." for i in range(c.num_layers)]

  def stacked(suffix, convert):
    return np.stack([convert(get(prefix + suffix)) for prefix in layer_names])

  def heads_kernel(heads):  # [heads * d, hidden] -> [hidden, heads, d]
    return lambda w: w.T.reshape(c.hidden_size, heads, c.head_dim)

  layers = {
      "input_layernorm": {"weight": stacked("input_layernorm.weight", lambda w: w)},
      "post_attention_layernorm": {
          "weight": stacked("post_attention_layernorm.weight", lambda w: w)},
      "self_attn": {
          "q_proj": {"kernel": stacked("self_attn.q_proj.weight", heads_kernel(c.num_heads))},
          "k_proj": {"kernel": stacked("self_attn.k_proj.weight", heads_kernel(c.num_kv_heads))},
          "v_proj": {"kernel": stacked("self_attn.v_proj.weight", heads_kernel(c.num_kv_heads))},
          "o_proj": {"kernel": stacked(
              "self_attn.o_proj.weight",
              lambda w: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size))},
      },
      "mlp": {name: {"kernel": stacked(f"mlp.{name}.weight", lambda w: w.T)}
              for name in ("gate_proj", "up_proj", "down_proj")},
  }
  params = {"embed_tokens": {"embedding": get("model.embed_tokens.weight")},
            "layers": layers, "norm": {"weight": get("model.norm.weight")}}
  if not c.tie_word_embeddings:
    params["lm_head"] = {"kernel": get("lm_head.weight").T}
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=c.param_dtype), params)


def load_hf_dir(path: str | pathlib.Path, dtype=jnp.float32) -> tuple[LlamaConfig, dict]:
  """(config, params) from a HF directory: `config.json` and `*.safetensors`."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  config = config_from_hf(json.loads((path / "config.json").read_text()), dtype)
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors in {path}")
  state = {}
  for file in files:
    state.update(load_file(str(file)))
  if config.tie_word_embeddings:
    state.pop("lm_head.weight", None)
  return config, params_from_state(state, config)


# GGUF tensor names -> HF names; `{}` is the layer number.
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                      "output": "lm_head"}


def unpermute_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's converter permutation of q/k rows (per head: [2, d/2] -> [d/2, 2])."""
  rows = weight.shape[0]
  return (weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
          .swapaxes(1, 2).reshape(weight.shape))


def _field(reader, key, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def gguf_metadata(path: str | pathlib.Path) -> dict[str, Any]:
  """The GGUF file's key/value metadata (token lists left out)."""
  import gguf  # pylint: disable=g-import-not-at-top
  reader = gguf.GGUFReader(str(path))
  skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
          "tokenizer.ggml.scores")
  return {key: field.contents() for key, field in reader.fields.items()
          if key not in skip and not key.startswith("GGUF.")}


def load_gguf(path: str | pathlib.Path, dtype=jnp.float32) -> tuple[LlamaConfig, dict]:
  """(config, params) from a llama-architecture GGUF file, every tensor dequantised."""
  import gguf  # pylint: disable=g-import-not-at-top
  reader = gguf.GGUFReader(str(path))
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"{path}: general.architecture={arch!r}; only 'llama' GGUF files load")
  heads = int(_field(reader, "llama.attention.head_count"))
  kv_heads = int(_field(reader, "llama.attention.head_count_kv", heads))
  hidden = int(_field(reader, "llama.embedding_length"))
  state = {}
  for tensor in reader.tensors:
    weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    weight = np.asarray(weight, np.float32).reshape(tuple(reversed(tensor.shape.tolist())))
    block, _, rest = tensor.name.partition(".")
    if block == "blk":
      layer, _, rest = rest.partition(".")
      base, _, kind = rest.partition(".")
      if base == "attn_q":
        weight = unpermute_rotary_rows(weight, heads)
      elif base == "attn_k":
        weight = unpermute_rotary_rows(weight, kv_heads)
      state[f"model.layers.{layer}.{_GGUF_LAYER_NAMES[base]}.{kind}"] = weight
    elif block in _GGUF_GLOBAL_NAMES:
      state[f"{_GGUF_GLOBAL_NAMES[block]}.{rest}"] = weight
  config = LlamaConfig(
      vocab_size=state["model.embed_tokens.weight"].shape[0], hidden_size=hidden,
      intermediate_size=int(_field(reader, "llama.feed_forward_length")),
      num_layers=int(_field(reader, "llama.block_count")), num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=int(_field(reader, "llama.attention.key_length", hidden // heads)),
      rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
      rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
      tie_word_embeddings="lm_head.weight" not in state, dtype=dtype, param_dtype=dtype)
  return config, params_from_state(state, config)
