"""retrieval_jax.distributed: when main.py calls jax.distributed.initialize."""

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
