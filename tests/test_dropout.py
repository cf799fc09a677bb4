"""`models/dropout.py`: 16-bit dropout masks against the rate, unbiasedness and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from retrieval_jax.models import dropout


@pytest.mark.parametrize("rate,threshold", [(0.0, 0), (0.1, 6554), (0.5, 32768), (1.0, 65536)])
def test_threshold_is_the_rate_in_units_of_two_to_the_minus_16(rate, threshold):
  assert dropout.drop_threshold(rate) == threshold


def test_a_rate_outside_zero_one_is_an_error():
  with pytest.raises(ValueError, match="rate"):
    dropout.drop_threshold(1.5)


@pytest.mark.parametrize("shape", [(64, 12, 128, 128), (3, 5, 7)])  # even and odd last axes
def test_halfwords_are_uniform(shape):
  bits = np.asarray(dropout.random_halfwords(jax.random.key(0), shape)).ravel()
  assert bits.dtype == np.uint16
  # Each of the 16 bit planes is a fair coin, within 5 standard errors.
  planes = (bits[:, None] >> np.arange(16)) & 1
  assert np.all(np.abs(planes.mean(0) - 0.5) < 5 * 0.5 / np.sqrt(bits.size))
  # The two halves of a word are not the same number.
  if shape[-1] % 2 == 0:
    assert np.mean(bits[0::2] == bits[1::2]) < 0.01


def test_drop_rate_and_expectation():
  x = jnp.full((256, 1024), 3.0)
  out = np.asarray(dropout.dropout(jax.random.key(1), x, 0.1))
  dropped = np.mean(out == 0.0)
  n = out.size
  assert abs(dropped - 6554 / 65536) < 5 * np.sqrt(0.1 * 0.9 / n)
  np.testing.assert_allclose(out[out != 0], 3.0 * 65536 / (65536 - 6554), rtol=1e-6)
  assert abs(out.mean() - 3.0) < 5 * 3.0 * np.sqrt(0.1 / 0.9 / n)


def test_keys_decide_the_mask():
  x = jnp.ones((8, 64))
  first, again, other = (np.asarray(dropout.dropout(jax.random.key(s), x, 0.5)) for s in (2, 2, 3))
  np.testing.assert_array_equal(first, again)
  assert np.any(first != other)


def test_rates_zero_and_one():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(dropout.dropout(jax.random.key(0), x, 0.0), x)
  np.testing.assert_array_equal(dropout.dropout(jax.random.key(0), x, 1.0), np.zeros((3, 4)))


def test_module_is_identity_when_deterministic_and_needs_an_rng_otherwise():
  module = dropout.Dropout(0.3)
  x = jnp.ones((4, 6))
  np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
  out = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert np.any(np.asarray(out) == 0) and np.any(np.asarray(out) != 0)
  with pytest.raises(Exception, match="dropout"):
    module.apply({}, x, deterministic=False)


def test_sharded_mask_equals_the_unsharded_one_and_stays_sharded():
  """On 8 devices with the batch sharded, the mask is the single-device one, drawn in place."""
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  x = jnp.ones((16, 4, 32, 32))
  key = jax.random.key(7)
  expected = np.asarray(dropout.dropout(key, x, 0.1))
  fn = jax.jit(lambda k, v: dropout.dropout(k, v, 0.1), out_shardings=sharding)
  out = fn(key, jax.device_put(x, sharding))
  np.testing.assert_array_equal(np.asarray(out), expected)
  hlo = fn.lower(key, jax.device_put(x, sharding)).compile().as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo
