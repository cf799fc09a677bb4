"""Sentence embeddings from token states: [CLS] or masked mean, projection, L2 normalisation."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

POOLING_MODES = ("cls", "mean", "pooler")


@dataclasses.dataclass(frozen=True)
class PoolingConfig:
  """How token states become one vector.

  Attributes:
    mode: `cls` (first token), `mean` (masked mean over real tokens) or `pooler` (BERT's
      dense+tanh over [CLS]; needs a checkpoint with a pooler).
    projection_dim: Add a linear projection to this width (None: no projection).
    projection_bias: Whether the projection has a bias.
    normalize: L2-normalise the final vector (cosine similarity as dot product).
    skip_first: `mean` over positions from this one on (TCT-ColBERT skips its 4-token
      `[CLS] [ Q ]` prefix); 0: every real token.
  """
  mode: str = "cls"
  projection_dim: int | None = None
  projection_bias: bool = True
  normalize: bool = False
  skip_first: int = 0

  def __post_init__(self):
    if self.mode not in POOLING_MODES:
      raise ValueError(f"pooling mode {self.mode!r} is not one of {POOLING_MODES}")
    if self.skip_first and self.mode != "mean":
      raise ValueError(f"pooling skip_first={self.skip_first} needs mode 'mean', not "
                       f"{self.mode!r}")


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `hidden` [b, l, d] over positions where `mask` [b, l] is 1, in float32."""
  weights = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
  # The clip matches sentence-transformers and keeps all-padding rows at zero, not NaN.
  return total / jnp.clip(jnp.sum(weights, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps), as torch.nn.functional.normalize."""
  norm = jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True)
  return x / jnp.maximum(norm, eps).astype(x.dtype)


class PoolingHead(nn.Module):
  """Pools token states, then optionally projects and normalises."""
  config: PoolingConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, attention_mask, pooler_output=None):
    mode = self.config.mode
    if mode == "cls":
      x = hidden[:, 0].astype(jnp.float32)
    elif mode == "mean":
      skip = self.config.skip_first
      x = mean_pool(hidden[:, skip:], attention_mask[:, skip:])
    else:
      if pooler_output is None:
        raise ValueError("pooling mode 'pooler' needs an encoder with with_pooler=True")
      x = pooler_output.astype(jnp.float32)
    if self.config.projection_dim:
      x = nn.Dense(self.config.projection_dim, use_bias=self.config.projection_bias,
                   dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.normal(0.02), ("embed", "projection")),
                   bias_init=nn.with_logical_partitioning(
                       nn.initializers.zeros_init(), ("projection",)),
                   name="projection")(x).astype(jnp.float32)
    if self.config.normalize:
      x = l2_normalize(x)
    return x
