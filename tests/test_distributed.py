"""retrieval_jax.distributed: when main.py calls jax.distributed.initialize."""

import jax
import numpy as np
import pytest

from retrieval_jax import distributed


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"SLURM_NTASKS": "1"}, None),
    ({"SLURM_NTASKS": "8"}, "SLURM"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI"),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_COORDINATOR_ADDRESS"),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1"}, "Cloud TPU (multi-host)"),
    ({"SLURM_NTASKS": "garbage"}, None),
])
def test_cluster_detection(env, expected):
  assert distributed.cluster_detected(env) == expected


def test_initialize_only_when_asked_or_detected(monkeypatch):
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda: calls.append(1))
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
  assert not distributed.maybe_initialize("auto", env={})
  assert not distributed.maybe_initialize("false", env={"SLURM_NTASKS": "8"})
  assert distributed.maybe_initialize("auto", env={"SLURM_NTASKS": "8"})
  assert distributed.maybe_initialize("true", env={})
  assert len(calls) == 2
  with pytest.raises(ValueError, match="distributed='yes'"):
    distributed.maybe_initialize("yes")


def test_explicit_flags_initialise_with_them(monkeypatch):
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize",
                      lambda *args, **kwargs: calls.append((args, kwargs)))
  assert distributed.maybe_initialize("false", env={}, coordinator_address="127.0.0.1:1234",
                                      num_processes=2, process_id=1)
  assert calls == [(("127.0.0.1:1234",), {"num_processes": 2, "process_id": 1})]


@pytest.mark.parametrize("flags, match", [
    (dict(coordinator_address="127.0.0.1:1", num_processes=2), "--process_id missing"),
    (dict(process_id=0), "--coordinator_address, --num_processes missing"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "0 <= --process_id"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), "--num_processes >= 1"),
])
def test_incomplete_or_inconsistent_flags_are_refused(flags, match):
  with pytest.raises(ValueError, match=match):
    distributed.maybe_initialize("auto", env={}, **flags)


@pytest.mark.parametrize("rows, count", [(0, 2), (5, 2), (1000, 2), (1000, 3), (130, 4)])
def test_shard_ranges_tile_the_rows_in_aligned_blocks(rows, count):
  ranges = [distributed.shard_range(rows, p, count) for p in range(count)]
  assert ranges[0][0] == 0 and ranges[-1][1] == rows
  for (_, stop), (start, _) in zip(ranges, ranges[1:]):
    assert stop == start
  for start, _ in ranges:
    assert start % 128 == 0 or start == rows


def test_one_process_exchanges_are_identities():
  rows = np.arange(12, dtype=np.int64).reshape(4, 3)
  assert distributed.allgather_rows(rows) is not None
  np.testing.assert_array_equal(distributed.allgather_rows(rows), rows)
  tree = {"a": jax.numpy.ones((2, 2))}
  assert isinstance(distributed.host_local(tree)["a"], np.ndarray)


def test_main_refuses_incomplete_multiprocess_flags(tmp_path):
  from tests import helpers  # pylint: disable=g-import-not-at-top

  result = helpers.run_python(["main.py", "--config=configs/dpr.py:smoke",
                               f"--workdir={tmp_path}", "--num_processes=2"], check=False)
  assert result.returncode != 0
  assert "--coordinator_address, --process_id missing" in result.stderr
