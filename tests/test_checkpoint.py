"""Tests for retrieval_jax.checkpoint on 8 fake CPU devices (see conftest.py).

A state of a tiny TextEncoder's params, its AdamW state, the step and RNG key data round
trips bit-identically; keep-last-N, the save interval and forced saves; async saves; the
extra JSON and the config; restoring a (8, 1)-mesh checkpoint onto (4, 2) and one device;
the errors for an empty directory and a missing step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from retrieval_jax import checkpoint, optim, sharding
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, abstract_params, init_params

_TINY = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_position_embeddings=64)
_MODEL = TextEncoder(_TINY)
_TX = optim.make_optimizer(1e-3, total_steps=100, warmup_steps=10, weight_decay=0.01,
                           max_grad_norm=1.0)


def _state_shardings(mesh, abstract_state):
  """Params by the logical-axis rules; Adam moments like their params; the rest replicated."""
  params = sharding.param_shardings(abstract_params(_MODEL), mesh)
  opt = optax.tree_map_params(_TX, lambda _, s: s, abstract_state["opt_state"], params,
                              transform_non_params=lambda _: sharding.replicated(mesh))
  return dict(params=params, opt_state=opt, step=sharding.replicated(mesh),
              rng=sharding.replicated(mesh))


@pytest.fixture(scope="module")
def state():
  """A state placed on a (8, 1) mesh, with a non-trivial optimizer state (one update)."""
  params = nn.meta.unbox(init_params(_MODEL, jax.random.PRNGKey(0)))

  @jax.jit  # one compiled update instead of many small eager ops on 8 devices
  def update(params):
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.1), params)
    return _TX.update(grads, _TX.init(params), params)[1]

  state = dict(params=params, opt_state=update(params), step=jnp.int32(7),
               rng=jax.random.key_data(jax.random.key(42)))
  return jax.device_put(state, _state_shardings(sharding.make_mesh(8, 1), state))


def _abstract(state):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _assert_identical(actual, expected):
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
  for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
    assert a.dtype == e.dtype and a.shape == e.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_round_trip_is_bit_identical_with_extra(tmp_path, state):
  extra = {"data_position": {"epoch": 2, "index": 1234}, "seed": 17, "note": "ok"}
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(7, state, extra=extra)
    ckpt.wait()
    assert ckpt.all_steps() == [7] and ckpt.latest_step() == 7
    mesh = sharding.make_mesh(8, 1)
    restored, restored_extra = ckpt.restore(
        abstract_state=_abstract(state), shardings=_state_shardings(mesh, state))
  _assert_identical(restored, state)
  assert restored_extra == extra
  # The stored key data rebuilds the same typed key.
  key = jax.random.wrap_key_data(restored["rng"])
  np.testing.assert_array_equal(jax.random.bits(key, (4,)),
                                jax.random.bits(jax.random.key(42), (4,)))


def test_host_arrays_round_trip_and_absent(tmp_path, state):
  host = {"candidates": np.arange(12, dtype=np.int64).reshape(3, 4) - 1,
          "snapshot_step": np.int64(40)}
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, state, host=host)
    assert ckpt.restore_host(1) is None
    restored = ckpt.restore_host(2)
    # The state item is unaffected by the optional host item.
    _assert_identical(ckpt.restore(2, abstract_state=_abstract(state))[0], state)
  with checkpoint.Checkpointer(tmp_path) as reopened:  # a new process, as on resume
    assert reopened.restore_host(1) is None
    np.testing.assert_array_equal(reopened.restore_host(2)["candidates"], host["candidates"])
  assert sorted(restored) == sorted(host)
  for key, value in host.items():
    assert restored[key].dtype == np.int64  # int64 kept although JAX runs without x64
    np.testing.assert_array_equal(restored[key], value)


def test_keep_last_n_interval_and_force(tmp_path, state):
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=5) as ckpt:
    saved = {step: ckpt.save(step, state) for step in range(1, 16)}
    ckpt.wait()
    assert [s for s, ok in saved.items() if ok] == [5, 10, 15]
    assert ckpt.all_steps() == [10, 15]  # step 5 pruned: keep the last 2
    assert ckpt.save(17, state, force=True)  # off the interval, e.g. the final step
    ckpt.wait()
    assert ckpt.all_steps() == [15, 17] and ckpt.latest_step() == 17


def test_async_save_then_restore_in_new_checkpointer(tmp_path, state):
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=True)
  ckpt.save(3, state, extra={"position": 3})
  ckpt.wait()
  ckpt.close()
  # A fresh process resumes from the latest step.
  with checkpoint.Checkpointer(tmp_path) as resumed:
    assert resumed.latest_step() == 3
    restored, extra = resumed.restore(abstract_state=_abstract(state),
                                      shardings=sharding.replicated(sharding.make_mesh(8, 1)))
  _assert_identical(restored, state)
  assert extra == {"position": 3}


@pytest.mark.parametrize("shape", [(4, 2), (1, 1)])
def test_restore_onto_other_mesh(tmp_path, state, shape):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(7, state)
    ckpt.wait()
    mesh = sharding.make_mesh(*shape, devices=jax.devices()[:shape[0] * shape[1]])
    targets = _state_shardings(mesh, state)
    restored, _ = ckpt.restore(7, abstract_state=_abstract(state), shardings=targets)
  _assert_identical(restored, state)
  for array, target in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(targets)):
    assert array.sharding.is_equivalent_to(target, array.ndim), (array.sharding, target)
  if shape == (4, 2):  # the MLP really is split over `model` now
    kernel = restored["params"]["backbone"]["layer_0"]["mlp"]["intermediate"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert kernel.addressable_shards[0].data.shape == (32, 32)


def test_restore_default_sharding_is_one_device(tmp_path, state):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    restored, _ = ckpt.restore(abstract_state=_abstract(state))
  _assert_identical(restored, state)
  assert all(len(x.sharding.device_set) == 1 for x in jax.tree_util.tree_leaves(restored))


def test_errors(tmp_path, state):
  with checkpoint.Checkpointer(tmp_path / "empty") as ckpt:
    with pytest.raises(FileNotFoundError, match="empty"):
      ckpt.restore(abstract_state=_abstract(state))
  with checkpoint.Checkpointer(tmp_path / "run") as ckpt:
    ckpt.save(2, state)
    with pytest.raises(ValueError, match=r"step 3 .*saved steps: \[2\]"):
      ckpt.restore(3, abstract_state=_abstract(state))
    with pytest.raises(TypeError, match="key_data"):
      ckpt.save(4, dict(rng=jax.random.key(0)), force=True)


def test_restore_targets_accepts_a_prefix_tree(state):
  mesh = sharding.make_mesh(4, 2)
  params = sharding.param_shardings(abstract_params(_MODEL), mesh)
  # One sharding per subtree: params by the rules, everything else replicated.
  targets = checkpoint.restore_targets(
      _abstract(state), dict(params=params, opt_state=sharding.replicated(mesh), step=None,
                             rng=sharding.replicated(mesh)))
  assert jax.tree_util.tree_structure(targets) == jax.tree_util.tree_structure(state)
  assert targets["params"]["backbone"]["layer_0"]["mlp"]["output"]["kernel"].sharding == \
      params["backbone"]["layer_0"]["mlp"]["output"]["kernel"]
  assert all(x.sharding == sharding.replicated(mesh)
             for x in jax.tree_util.tree_leaves(targets["opt_state"]))
  assert len(targets["step"].sharding.device_set) == 1  # None: the one-device default


def test_partial_restore_reads_only_the_given_part(tmp_path, state):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    abstract = _abstract(state)
    part = {key: abstract[key] for key in list(abstract)[:1]}
    restored, _ = ckpt.restore(abstract_state=part, partial=True)
  assert set(restored) == set(part)
  _assert_identical(restored, {key: state[key] for key in part})


def test_best_checkpoint_is_kept_apart_replaced_and_restored(tmp_path, state):
  best = {"params": state["params"], "step": state["step"]}
  abstract = _abstract(best)
  assert not checkpoint.has_best(tmp_path)
  with checkpoint.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    assert ckpt.best_record() is None
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
      ckpt.restore(checkpoint.BEST, abstract_state=abstract, partial=True)
    ckpt.save_best(2, best, {"metric": "dev/x", "value": 0.5})
    later = jax.tree_util.tree_map(lambda x: x + 1, best)
    ckpt.save_best(4, later, {"metric": "dev/x", "value": 0.7})
    for step in (3, 5, 6):  # the periodic checkpoints prune only their own directory
      ckpt.save(step, state, force=True)
    ckpt.wait()
    assert ckpt.all_steps() == [6]
    assert ckpt.best_record() == {"metric": "dev/x", "value": 0.7, "step": 4}
  assert checkpoint.has_best(tmp_path)
  assert sorted(p.name for p in (tmp_path / checkpoint.BEST_SUBDIR).iterdir()) == ["4"]
  with checkpoint.Checkpointer(tmp_path) as ckpt:  # a new reader, as evaluation opens one
    restored, extra = ckpt.restore(checkpoint.BEST, abstract_state=abstract, partial=True)
    assert extra["step"] == 4
    with pytest.raises(ValueError, match="partial=True"):
      ckpt.restore(checkpoint.BEST, abstract_state=abstract)
  _assert_identical(restored, jax.device_get(later))
