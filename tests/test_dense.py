"""`models/dense.py`: the custom-VJP matmul and `Dense` against autodiff and `nn.Dense`."""

import flax.linen as nn
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest

from retrieval_jax.models import dense
from retrieval_jax.models import transformer
from retrieval_jax.models.config import EncoderConfig


@pytest.mark.parametrize("shape", [(7, 12), (3, 5, 12), (2, 3, 4, 12)])
def test_matmul_values_and_gradients_equal_autodiff(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (12, 9))
  upstream = jax.random.normal(jax.random.key(2), shape[:-1] + (9,))
  np.testing.assert_allclose(dense.matmul(x, kernel), x @ kernel, rtol=1e-6, atol=1e-6)
  ours = jax.grad(lambda a, b: jnp.sum(dense.matmul(a, b) * upstream), argnums=(0, 1))(x, kernel)
  ref = jax.grad(lambda a, b: jnp.sum((a @ b) * upstream), argnums=(0, 1))(x, kernel)
  for got, want in zip(ours, ref):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_matmul_gradient_matches_finite_differences_in_float64():
  with jax.enable_x64():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    jtu.check_grads(dense.matmul, (x, kernel), order=1, modes=("rev",))


def test_matmul_keeps_bfloat16():
  x = jnp.ones((4, 8), jnp.bfloat16)
  kernel = jnp.ones((8, 3), jnp.bfloat16)
  grads = jax.grad(lambda a, b: jnp.sum(dense.matmul(a, b).astype(jnp.float32)),
                   argnums=(0, 1))(x, kernel)
  assert dense.matmul(x, kernel).dtype == jnp.bfloat16
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_has_nn_dense_parameters_and_outputs(use_bias):
  x = jax.random.normal(jax.random.key(0), (3, 5, 16))
  ours, ref = (cls(features=7, use_bias=use_bias) for cls in (dense.Dense, nn.Dense))
  params = ref.init(jax.random.key(1), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x))
          == jax.tree.map(jnp.shape, params))
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6, atol=1e-6)
  grad = lambda module: jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grad(ours), grad(ref))


def test_head_projection_and_merge_equal_their_einsums():
  """q/k/v come out head-major and the output projection contracts (heads, kv), as einsums."""
  cfg = EncoderConfig(hidden_size=24, num_heads=4, intermediate_size=8, num_layers=1)
  x = jax.random.normal(jax.random.key(0), (2, 5, 24))
  project = transformer.HeadProjection(cfg)
  params = nn.unbox(project.init(jax.random.key(1), x))["params"]
  want = (jnp.einsum("bld,dhk->bhlk", x, params["kernel"])
          + params["bias"][None, :, None, :])
  np.testing.assert_allclose(project.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)

  context = jax.random.normal(jax.random.key(2), (2, 4, 5, 6))
  merge = transformer.HeadMerge(cfg)
  params = nn.unbox(merge.init(jax.random.key(3), context))["params"]
  assert params["kernel"].shape == (4, 6, 24) and params["bias"].shape == (24,)
  want = jnp.einsum("bhlk,hkd->bld", context, params["kernel"]) + params["bias"]
  np.testing.assert_allclose(merge.apply({"params": params}, context), want, rtol=1e-5,
                             atol=1e-5)
  ref = nn.DenseGeneral(24, axis=(-2, -1))
  np.testing.assert_allclose(ref.apply({"params": params}, context.transpose(0, 2, 1, 3)),
                             want, rtol=1e-5, atol=1e-5)


def test_backward_keeps_the_transposed_kernel_apart():
  """The barrier that keeps XLA from folding `kernel.T` back into the product is in the HLO."""
  x = jnp.ones((4, 6, 8))
  kernel = jnp.ones((8, 3))
  hlo = jax.jit(jax.grad(lambda a, b: jnp.sum(dense.matmul(a, b)), argnums=(0, 1))).lower(
      x, kernel).as_text()
  assert "optimization_barrier" in hlo
