"""`nn.Dense` with a hand-written backward whose matmuls XLA:CPU runs in their fast layout.

Autodiff of `x @ kernel` gives XLA two backward products that contract a transposed operand:
`dy @ kernel.T` and `x.T @ dy` over the batch and length axes. XLA:CPU keeps them as such, and
its GEMMs run slower on those layouts than on plain row-major products. `matmul`'s custom VJP
materialises `kernel.T` (a copy of the small weight, kept by an optimisation barrier so that XLA
does not fold it back into the product) and flattens the rows of `x` and `dy` before the weight
gradient. The values are the same products, so results match autodiff's (bit for bit on CPU).

`Dense` has `nn.Dense`'s parameters (`kernel` [in, out], `bias` [out]) and arguments, so the
parameter tree and checkpoints do not change.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [..., in] @ kernel [in, out] -> [..., out]."""
  return jnp.einsum("...i,io->...o", x, kernel)


def _matmul_fwd(x, kernel):
  return matmul(x, kernel), (x, kernel)


def _matmul_bwd(residuals, dy):
  x, kernel = residuals
  dx = jnp.einsum("...o,oi->...i", dy, jax.lax.optimization_barrier(kernel.T))
  dkernel = x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
  return dx, dkernel


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """`nn.Dense` (same parameters and initialisers) over `matmul`.

  Attributes:
    features: Output width.
    use_bias: Whether to add a bias.
    dtype: Computation dtype (None: from the inputs and parameters).
    param_dtype: Parameter dtype.
    kernel_init: Initialiser of the [in, out] kernel.
    bias_init: Initialiser of the [out] bias.
  """
  features: int
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = matmul(x, kernel)
    return y if bias is None else y + bias
