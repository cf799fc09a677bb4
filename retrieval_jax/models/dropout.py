"""Inverted dropout drawing 16 random bits per element instead of 32.

`nn.Dropout` draws a 32-bit word per element (`jax.random.bernoulli`). On XLA:CPU the
threefry bits are most of dropout's cost, and a training step of the encoder draws one per
attention weight. Here each 32-bit word is split into two 16-bit halves, one per element,
compared with the drop rate in units of 2^-16. The rate is then a multiple of 2^-16 (0.1
becomes 6554 / 65536 = 0.10000610), and the kept values are scaled by the exact inverse of
that keep probability, so the output's expectation is the input, as with `nn.Dropout`.

Words are drawn along the last axis (the halves of one word are neighbours there), so the
draw shards over the leading axes like the activations do (`jax_threefry_partitionable`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_LEVELS = 1 << 16


def drop_threshold(rate: float) -> int:
  """The 16-bit threshold below which an element is dropped: round(rate * 2^16)."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"dropout rate must be in [0, 1], got {rate}")
  return int(round(rate * _LEVELS))


def random_halfwords(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform uint16 of `shape`, two per 32-bit word when the last axis is even."""
  if not shape or shape[-1] % 2:
    return jax.random.bits(key, shape, jnp.uint16)
  words = jax.random.bits(key, (*shape[:-1], shape[-1] // 2), jnp.uint32)
  return jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(shape)


def dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
  """x with each element zeroed with probability ~rate, the rest scaled by 1 / keep."""
  threshold = drop_threshold(rate)
  if threshold == 0:
    return x
  if threshold == _LEVELS:
    return jnp.zeros_like(x)
  keep = random_halfwords(key, x.shape) >= jnp.uint16(threshold)
  scale = jnp.asarray(_LEVELS / (_LEVELS - threshold), x.dtype)
  return jax.lax.select(keep, x * scale, jnp.zeros_like(x))


class Dropout(nn.Module):
  """`nn.Dropout`'s interface (rate, `deterministic`, the "dropout" rng) on `dropout`."""
  rate: float
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    return dropout(self.make_rng(self.rng_collection), x, self.rate)
