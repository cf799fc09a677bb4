"""Tests for retrieval_jax.sharding on 8 fake CPU devices (see conftest.py).

Mesh shapes and their errors, the logical-axis rules applied to a tiny TextEncoder (placed
arrays carry the expected specs), a (4, 2)-sharded jitted forward equal to the one-device
forward, and config validation naming the offending key.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from retrieval_jax import sharding
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, abstract_params, init_params
from retrieval_jax.models.pooling import PoolingConfig

_TINY = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_position_embeddings=64)
_MODEL = TextEncoder(_TINY, PoolingConfig("mean", projection_dim=8))


def _leaves(tree):
  """{'backbone/layer_0/...': leaf} for a tree of arrays or shardings."""
  return {sharding._path_str(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def mesh42():
  return sharding.make_mesh(4, 2)


@pytest.fixture(scope="module")
def boxed_params():
  return init_params(_MODEL, jax.random.PRNGKey(0), seq_len=16)


@pytest.fixture(scope="module")
def placed(boxed_params, mesh42):
  """(shardings, params placed on the (4, 2) mesh)."""
  shardings = sharding.param_shardings(abstract_params(_MODEL), mesh42)
  return shardings, sharding.shard_params(boxed_params, shardings)


# --- mesh ----------------------------------------------------------------------------------------


def test_eight_fake_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("data,model,shape", [(8, 1, (8, 1)), (4, 2, (4, 2)), (2, 4, (2, 4)),
                                              (-1, 2, (4, 2)), (2, -1, (2, 4)), (-1, 1, (8, 1))])
def test_make_mesh_shapes(data, model, shape):
  mesh = sharding.make_mesh(data, model)
  assert mesh.axis_names == ("data", "model")
  assert (mesh.shape["data"], mesh.shape["model"]) == shape
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_make_mesh_on_a_subset_of_devices():
  mesh = sharding.make_mesh(-1, 2, devices=jax.devices()[:4])
  assert dict(mesh.shape) == {"data": 2, "model": 2}


@pytest.mark.parametrize("data,model,key", [
    (3, 1, "mesh.data"), (-1, 3, "mesh.model"), (2, 2, "mesh.data \\* mesh.model"),
    (4, 4, "mesh.data \\* mesh.model"), (0, 1, "mesh.data"), (8, -2, "mesh.model"),
    (-1, -1, "mesh.data and mesh.model")])
def test_make_mesh_rejects_bad_shapes_naming_the_key(data, model, key):
  with pytest.raises(ValueError, match=key):
    sharding.make_mesh(data, model)


def test_mesh_from_config_defaults_to_all_devices_on_data():
  config = ml_collections.ConfigDict({"mesh": {"data": -1, "model": 2}})
  assert dict(sharding.mesh_from_config(config).shape) == {"data": 4, "model": 2}
  assert dict(sharding.mesh_from_config({}).shape) == {"data": 8, "model": 1}


# --- logical-axis rules --------------------------------------------------------------------------


def test_every_model_axis_name_has_a_rule():
  names = {"vocab", "embed", "position", "token_type", "heads", "kv", "mlp", "embed_out",
           "projection", "batch", "length"}
  assert names <= {name for name, _ in sharding.LOGICAL_AXIS_RULES}


def test_param_shardings_follow_the_rules(placed):
  shardings, params = placed
  specs = {path: s.spec for path, s in _leaves(shardings).items()}
  placed_specs = {path: x.sharding.spec for path, x in _leaves(params).items()}
  assert specs == placed_specs
  layer = "backbone/layer_1"
  for name in ("query", "key", "value"):
    assert specs[f"{layer}/attention/{name}/kernel"] == P(None, "model", None)  # embed, heads, kv
    assert specs[f"{layer}/attention/{name}/bias"] == P("model", None)
  assert specs[f"{layer}/attention/output/kernel"] == P("model", None, None)
  assert specs[f"{layer}/mlp/intermediate/kernel"] == P(None, "model")
  assert specs[f"{layer}/mlp/intermediate/bias"] == P("model")
  assert specs[f"{layer}/mlp/output/kernel"] == P("model", None)
  for table in ("word", "position", "token_type"):
    path = f"backbone/embeddings/{table}_embeddings/embedding"
    assert specs[path] == P(None, None)
    assert params[path.split("/")[0]]["embeddings"][f"{table}_embeddings"][
        "embedding"].sharding.is_fully_replicated
  assert specs["head/projection/kernel"] == P(None, None)


def test_sharded_kernel_is_split_by_head(placed):
  _, params = placed
  kernel = params["backbone"]["layer_0"]["attention"]["query"]["kernel"]  # [32, 4 heads, 8]
  assert {shard.data.shape for shard in kernel.addressable_shards} == {(32, 2, 8)}


def test_param_shardings_reject_unknown_logical_names(mesh42):
  boxed = {"dense": {"kernel": nn.LogicallyPartitioned(jnp.zeros((4, 4)), ("embed", "hedas"))}}
  with pytest.raises(ValueError, match="dense/kernel.*hedas"):
    sharding.param_shardings(boxed, mesh42)


def test_param_shardings_reject_indivisible_dimensions():
  mesh = sharding.make_mesh(2, 4)
  boxed = {"attn": {"kernel": nn.LogicallyPartitioned(jnp.zeros((8, 6, 4)),
                                                      ("embed", "heads", "kv"))}}
  with pytest.raises(ValueError, match="attn/kernel.*heads=6.*'model' of size 4"):
    sharding.param_shardings(boxed, mesh)


def test_sharded_jitted_forward_equals_one_device_forward(boxed_params, placed, mesh42):
  shardings, params = placed
  rng = np.random.default_rng(0)
  ids = rng.integers(1, _TINY.vocab_size, size=(8, 16)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[::2, 10:] = 0  # padded rows, so the masked mean is exercised

  def apply(p, ids, mask):
    return _MODEL.apply({"params": p}, ids, mask)

  expected = apply(nn.meta.unbox(boxed_params), ids, mask)  # eager, one device
  rows = sharding.batch_sharding(mesh42)
  forward = jax.jit(apply, in_shardings=(shardings, rows, rows), out_shardings=rows)
  got = forward(params, ids, mask)
  assert got.sharding.spec == P("data")
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_replicated_and_batch_shardings(mesh42):
  assert sharding.replicated(mesh42).spec == P()
  assert sharding.batch_sharding(mesh42).spec == P("data")


# --- validate ------------------------------------------------------------------------------------


def _config(batch_size=32, data=-1, model=2):
  return ml_collections.ConfigDict({"mesh": {"data": data, "model": model},
                                    "train": {"batch_size": batch_size}})


def test_validate_accepts_a_fitting_config():
  assert sharding.validate(_config(), _TINY) == (4, 2)
  assert sharding.validate(_config(model=4), [_TINY, _TINY.replace(num_layers=1)]) == (2, 4)


def test_validate_rejects_batch_not_divisible_by_data_axis():
  with pytest.raises(ValueError, match=r"train\.batch_size=30 .*mesh\.data=4"):
    sharding.validate(_config(batch_size=30), _TINY)


def test_validate_rejects_model_axis_not_dividing_heads():
  encoder = _TINY.replace(hidden_size=48, num_heads=6, intermediate_size=96)
  with pytest.raises(ValueError, match=r"mesh\.model=4 does not divide model\.num_heads=6"):
    sharding.validate(_config(model=4), encoder)


def test_validate_rejects_model_axis_not_dividing_mlp_width():
  encoder = _TINY.replace(intermediate_size=36)
  message = r"mesh\.model=8 does not divide model\.intermediate_size=36"
  with pytest.raises(ValueError, match=message):
    sharding.validate(_config(model=8, batch_size=8), encoder)


def test_validate_reports_every_problem_at_once():
  encoder = {"num_heads": 6, "intermediate_size": 38}
  with pytest.raises(ValueError) as error:
    sharding.validate(_config(batch_size=31, model=4), encoder)
  for key in ("train.batch_size", "model.num_heads", "model.intermediate_size"):
    assert key in str(error.value)


def test_validate_reads_encoder_shape_from_config_model():
  config = _config(model=4)
  config.model = {"name": "tiny", "num_heads": 6, "intermediate_size": 64}
  with pytest.raises(ValueError, match="model.num_heads=6"):
    sharding.validate(config)


@pytest.mark.parametrize("config,key", [
    (_config(data=3, model=1), "mesh.data"), (_config(data=-1, model=3), "mesh.model"),
    (ml_collections.ConfigDict({"mesh": {"data": 8, "model": 1}}), "train.batch_size"),
    (_config(batch_size=0), "train.batch_size")])
def test_validate_rejects_bad_mesh_or_missing_batch_naming_the_key(config, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    sharding.validate(config, _TINY)


def test_split_devices_sets_the_last_of_each_process_aside():
  devices = jax.devices()
  train_devices, refresh = sharding.split_devices(3, devices)
  assert [d.id for d in train_devices] == [0, 1, 2, 3, 4]
  assert [d.id for d in refresh] == [5, 6, 7]
  assert sharding.split_devices(0, devices) == (devices, [])
  with pytest.raises(ValueError, match=r"mesh\.refresh_devices=8 leaves no training device"):
    sharding.split_devices(8, devices)


def test_mesh_and_validation_use_the_training_devices():
  config = {"mesh": {"data": -1, "model": 1, "refresh_devices": 2},
            "train": {"batch_size": 12}}
  assert sharding.mesh_from_config(config).devices.size == 6
  assert sharding.validate(config) == (6, 1)
  assert [d.id for d in sharding.refresh_mesh(config).devices.flat] == [6, 7]
  assert sharding.refresh_mesh({"mesh": {"data": -1}}) is None
  with pytest.raises(ValueError, match=r"mesh\.refresh_devices=-1"):
    sharding.mesh_from_config({"mesh": {"refresh_devices": -1}})
