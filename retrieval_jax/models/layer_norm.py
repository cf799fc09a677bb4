"""LayerNorm with a hand-written backward pass: `nn.LayerNorm`'s parameters, fewer passes.

Autodiff of `nn.LayerNorm` differentiates through the mean, the variance and the rsqrt as
separate reductions and broadcasts; XLA:CPU then runs several passes over the [tokens, embed]
activations in the backward. The closed form needs two row reductions, over quantities the
forward already has (the normalised rows and 1/std):

  x̂ = (x - mean) / std,  g' = g * scale
  dx = (g' - mean(g') - x̂ * mean(g' * x̂)) / std,  dscale = Σ g * x̂,  dbias = Σ g

The variance is the two-pass one, mean((x - mean)²), as PyTorch computes it (`nn.LayerNorm`'s
default, mean(x²) - mean², loses digits when |mean| ≫ std). Statistics are in float32 whatever
the compute dtype.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def _float(x: jax.Array) -> jax.Array:
  """x in float32 at least (float64 stays float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _stats(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """(x̂, 1/std) of each row over the last axis, in float32 at least."""
  x = _float(x)
  centered = x - jnp.mean(x, axis=-1, keepdims=True)
  inv_std = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + eps)
  return centered * inv_std, inv_std


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """LayerNorm over the last axis: x̂ * scale + bias, in `x`'s dtype.

  Args:
    x: [..., features] activations.
    scale: [features] gain.
    bias: [features] offset.
    eps: Added to the variance.
  """
  normalized, _ = _stats(x, eps)
  return (normalized * _float(scale) + _float(bias)).astype(x.dtype)


def _forward(x, scale, bias, eps):
  normalized, inv_std = _stats(x, eps)
  out = normalized * _float(scale) + _float(bias)
  return out.astype(x.dtype), (normalized, inv_std, scale, bias)


def _backward(eps, residuals, grad):
  del eps
  normalized, inv_std, scale, bias = residuals
  x_dtype = grad.dtype  # The output's dtype, which is x's.
  grad = _float(grad)
  scaled = grad * _float(scale)
  dx = inv_std * (scaled - jnp.mean(scaled, axis=-1, keepdims=True)
                  - normalized * jnp.mean(scaled * normalized, axis=-1, keepdims=True))
  rows = tuple(range(grad.ndim - 1))
  dscale = jnp.sum(grad * normalized, axis=rows).astype(scale.dtype)
  dbias = jnp.sum(grad, axis=rows).astype(bias.dtype)
  return dx.astype(x_dtype), dscale, dbias


layer_norm.defvjp(_forward, _backward)


class LayerNorm(nn.Module):
  """Drop-in for `nn.LayerNorm` (same `scale` and `bias` parameters) using `layer_norm`.

  Attributes:
    epsilon: Added to the variance.
    dtype: Output dtype (None: the input's); statistics are float32 either way.
    param_dtype: Parameter dtype.
    scale_init: Initializer of `scale`.
    bias_init: Initializer of `bias`.
  """
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Callable = nn.initializers.ones_init()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
    # As nn.LayerNorm: normalise x in its own precision, cast the result.
    return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype or x.dtype)
