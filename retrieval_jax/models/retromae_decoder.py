"""RetroMAE's enhanced decoder (Xiao et al. 2022; staoxiao/RetroMAE `src/pretrain/modeling.py`).

One post-LN BERT layer (`TransformerBlock`) over two streams of the same length L:
  * query stream H1 = the position embeddings (the encoder's table rows 0..L-1, as they are:
    no LayerNorm) + the sentence vector (the encoder's last [CLS] state);
  * content stream H2 = [sentence vector; the embedding-layer output of the original tokens
    1..L-1] (the encoder's own embedding module, so its LayerNorm and dropout apply);
and a per-row visibility [b, L, L] (`data/masking.decoder_visibility`). The attention
residual is the query stream, as the reference's `BertLayerForDecoder`. The MLM head that
reads its output is the encoder's (`TextEncoder.mlm_logits`). `save_params` / `load_params`
keep the decoder beside an exported encoder, so that pre-training can continue from both.
"""

from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from retrieval_jax import files
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.transformer import TransformerBlock, mask_bias


def decoder_streams(sentence: jax.Array, token_embeddings: jax.Array,
                    position_table: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(H1, H2), each [b, L, d] (module docstring)."""
  length = token_embeddings.shape[1]
  sentence = sentence[:, None, :].astype(token_embeddings.dtype)
  query = position_table[None, :length].astype(token_embeddings.dtype) + sentence
  content = jnp.concatenate([sentence, token_embeddings[:, 1:]], axis=1)
  return query, content


class RetroMAEDecoder(nn.Module):
  """The one-layer decoder; `config` is the encoder's (same width, heads, dropout)."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, sentence, token_embeddings, position_table, visibility,
               deterministic: bool = True):
    """Decoder states [b, L, d].

    Args:
      sentence: [b, d] the sentence vector.
      token_embeddings: [b, L, d] the embedding-layer output of the uncorrupted block.
      position_table: [>= L, d] the encoder's position embeddings.
      visibility: [b, L, L] 1 where row i may attend to position j.
      deterministic: False to apply dropout (needs a `dropout` RNG).
    """
    query, content = decoder_streams(sentence, token_embeddings, position_table)
    return TransformerBlock(self.config, name="layer")(query, mask_bias(visibility),
                                                       deterministic, kv=content)


PARAMS_FILE = "params.npz"
CONFIG_FILE = "config.json"
_SHAPE_KEYS = ("hidden_size", "num_heads", "intermediate_size")


def _flat_name(path) -> str:
  """A parameter's name in `params.npz`: its tree path joined by '/'."""
  return "/".join(str(getattr(k, "key", k)) for k in path)


def save_params(params: Any, config: EncoderConfig, out_dir) -> Any:
  """Writes host `params` (`params.npz`, names joined by '/') and `config.json` to `out_dir`."""
  out = files.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  flat = {_flat_name(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  with (out / PARAMS_FILE).open("wb") as f:
    np.savez(f, **flat)
  (out / CONFIG_FILE).write_text(json.dumps(
      dict(architecture="RetroMAEDecoder", **{k: getattr(config, k) for k in _SHAPE_KEYS}),
      indent=2))
  return out


def load_params(directory, config: EncoderConfig, expected: Any) -> dict:
  """Reads a `save_params` directory for a decoder of the encoder `config`.

  Args:
    directory: what `save_params` wrote (local or gs://).
    config: the encoder's config; the saved width, heads and MLP size must match it.
    expected: the decoder's (abstract, unboxed) parameters: names and shapes to match.

  Raises:
    ValueError: a missing file, another shape, or missing / unexpected / mis-shaped weights,
      listed.
  """
  directory = files.as_path(directory)
  for name in (PARAMS_FILE, CONFIG_FILE):
    if not (directory / name).exists():
      raise ValueError(f"{directory} has no {name}: not a RetroMAE decoder export")
  saved = json.loads((directory / CONFIG_FILE).read_text())
  differ = {k: (saved.get(k), getattr(config, k)) for k in _SHAPE_KEYS
            if saved.get(k) != getattr(config, k)}
  if differ:
    raise ValueError(f"{directory}: the decoder's {differ} (saved, encoder) do not match the "
                     "encoder")
  with (directory / PARAMS_FILE).open("rb") as f:
    with np.load(f) as npz:
      arrays = {name: npz[name] for name in npz.files}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(expected)
  names = [_flat_name(path) for path, _ in leaves]
  missing = sorted(set(names) - set(arrays))
  unexpected = sorted(set(arrays) - set(names))
  shapes = [f"{n} {arrays[n].shape} != {tuple(leaf.shape)}" for n, (_, leaf) in
            zip(names, leaves) if n in arrays and arrays[n].shape != tuple(leaf.shape)]
  if missing or unexpected or shapes:
    raise ValueError(f"{directory}: decoder weights do not match: missing {missing}, "
                     f"unexpected {unexpected}, shapes {shapes}")
  return jax.tree_util.tree_unflatten(
      treedef, [arrays[n].astype(leaf.dtype) for n, (_, leaf) in zip(names, leaves)])
