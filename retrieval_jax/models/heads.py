"""Heads over encoder states, each its own module with logical axis names.

- `TokenProjection`: per-token vectors (ColBERT): a linear map of every hidden state, L2
  normalised, padding zeroed.
- `MLMHead`: BERT's / RoBERTa's masked-LM head, its decoder tied to the word embeddings
  (the table is passed in, so the head owns only its transform and output bias).
- `MLPProjection`: an MLP over a pooled vector (SG-OPT's projection head).

The sentence-vector head (`[CLS]` / mean, projection, L2) is `pooling.PoolingHead`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from retrieval_jax.models import pooling
from retrieval_jax.models.transformer import gelu

_INIT_STD = 0.02  # BERT's initializer_range.


def _init(names):
  return nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


@dataclasses.dataclass(frozen=True)
class TokenProjectionConfig:
  """ColBERT's token head: `dim`-wide linear map (no bias in ColBERT), L2 per token."""
  dim: int = 128
  use_bias: bool = False
  normalize: bool = True


class TokenProjection(nn.Module):
  """[b, l, hidden] -> [b, l, dim] token vectors; rows where `mask` is 0 are zero."""
  config: TokenProjectionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, mask):
    x = nn.Dense(self.config.dim, use_bias=self.config.use_bias, dtype=self.dtype,
                 param_dtype=self.param_dtype, kernel_init=_init(("embed", "projection")),
                 bias_init=_zeros(("projection",)), name="linear")(hidden).astype(jnp.float32)
    if self.config.normalize:
      x = pooling.l2_normalize(x)
    return x * mask[..., None].astype(x.dtype)


class MLMHead(nn.Module):
  """Masked-LM logits: dense + GELU + LayerNorm, then the tied word embeddings + a bias.

  Parameter names follow HF: `transform/dense`, `transform/LayerNorm`, `bias` (BERT's
  `cls.predictions.*`; RoBERTa's `lm_head.dense`, `lm_head.layer_norm`, `lm_head.bias`).
  """
  vocab_size: int
  hidden_size: int
  layer_norm_eps: float = 1e-12
  gelu_approximate: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, word_embeddings):
    """`hidden` [..., hidden], `word_embeddings` [vocab, hidden] -> float32 [..., vocab]."""
    x = nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                 kernel_init=_init(("embed", "embed_out")), bias_init=_zeros(("embed_out",)),
                 name="transform_dense")(hidden)
    x = gelu(x, self.gelu_approximate)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                     param_dtype=self.param_dtype, scale_init=_ones(("embed",)),
                     bias_init=_zeros(("embed",)), name="transform_LayerNorm")(x)
    bias = self.param("bias", _zeros(("vocab",)), (self.vocab_size,), self.param_dtype)
    x, table = nn.dtypes.promote_dtype(x, word_embeddings, dtype=self.dtype)
    logits = jnp.einsum("...d,vd->...v", x, table, preferred_element_type=jnp.float32)
    return logits + bias.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class MLPProjectionConfig:
  """Widths of the MLP's layers (the last is the output); GELU between them, and after the
  last layer too with `final_activation` (SG-OPT's head ends in a GELU)."""
  widths: tuple[int, ...] = (768, 768)
  use_bias: bool = True
  final_activation: bool = False


class MLPProjection(nn.Module):
  """[..., d] -> [..., widths[-1]]: Dense, GELU, ..., Dense (+ GELU with `final_activation`)."""
  config: MLPProjectionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    widths = self.config.widths
    for i, width in enumerate(widths):
      x = nn.Dense(width, use_bias=self.config.use_bias, dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=_init(("embed", "projection")),
                   bias_init=_zeros(("projection",)), name=f"dense_{i}")(x)
      if i + 1 < len(widths) or self.config.final_activation:
        x = gelu(x, approximate=False)
    return x.astype(jnp.float32)
