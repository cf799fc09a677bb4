"""LayerNorm with the closed-form backward: same values and gradients as autodiff."""

import flax.linen as nn
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest

from retrieval_jax.models import layer_norm


def _inputs(shape=(3, 5, 48), offset=1.5):
  x = jax.random.normal(jax.random.key(0), shape) * 3.0 + offset
  upstream = jax.random.normal(jax.random.key(1), shape)
  scale = 1.0 + 0.1 * jax.random.normal(jax.random.key(2), shape[-1:])
  bias = 0.1 * jax.random.normal(jax.random.key(3), shape[-1:])
  return x, upstream, scale, bias


def _reference(x, scale, bias, eps):
  """The textbook LayerNorm (two-pass variance), differentiated by JAX."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def test_values_and_gradients_equal_autodiff_of_the_textbook_formula():
  x, upstream, scale, bias = _inputs()
  ours = lambda *a: jnp.sum(layer_norm.layer_norm(*a, 1e-12) * upstream)
  ref = lambda *a: jnp.sum(_reference(*a, 1e-12) * upstream)
  np.testing.assert_allclose(layer_norm.layer_norm(x, scale, bias, 1e-12),
                             _reference(x, scale, bias, 1e-12), atol=2e-6)
  for got, want in zip(jax.grad(ours, argnums=(0, 1, 2))(x, scale, bias),
                       jax.grad(ref, argnums=(0, 1, 2))(x, scale, bias)):
    np.testing.assert_allclose(got, want, atol=3e-5, rtol=1e-5)


def test_gradient_matches_finite_differences_in_float64():
  with jax.enable_x64():
    x, upstream, scale, bias = (a.astype(jnp.float64) for a in _inputs((2, 8)))
    # Checks the hand-written rule itself, not its agreement with another autodiff.
    jtu.check_grads(lambda x, s, b: layer_norm.layer_norm(x, s, b, 1e-5),
                              (x, scale, bias), order=1, modes=("rev",))


def test_module_is_a_drop_in_for_flax_layer_norm():
  x, upstream, _, _ = _inputs()
  theirs, ours = nn.LayerNorm(epsilon=1e-12), layer_norm.LayerNorm(epsilon=1e-12)
  params = theirs.init(jax.random.key(4), x)
  assert jax.tree.structure(params) == jax.tree.structure(ours.init(jax.random.key(4), x))
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(5), a.shape),
                        params)
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), atol=2e-6)
  loss = lambda module: lambda p: jnp.sum(module.apply(p, x) * upstream)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=3e-5, rtol=1e-5),
               jax.grad(loss(ours))(params), jax.grad(loss(theirs))(params))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_keeps_the_input_dtype_with_float32_statistics(dtype):
  x, upstream, scale, bias = _inputs()
  # Within bfloat16's rounding of the input: the statistics themselves are float32.
  out = layer_norm.layer_norm(x.astype(dtype), scale, bias, 1e-12)
  assert out.dtype == dtype
  grads = jax.grad(lambda x: jnp.sum(layer_norm.layer_norm(x, scale, bias, 1e-12)
                                     .astype(jnp.float32) * upstream))(x.astype(dtype))
  assert grads.dtype == dtype
  np.testing.assert_allclose(out.astype(jnp.float32),
                             _reference(x.astype(dtype).astype(jnp.float32), scale, bias, 1e-12),
                             atol=0.05 if dtype == jnp.bfloat16 else 2e-6)


def test_module_dtype_casts_the_output_not_the_input():
  x, _, _, _ = _inputs()
  module = layer_norm.LayerNorm(epsilon=1e-12, dtype=jnp.bfloat16)
  params = module.init(jax.random.key(0), x)
  out = module.apply(params, x)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, nn.LayerNorm(epsilon=1e-12, dtype=jnp.bfloat16).apply(
      params, x))
