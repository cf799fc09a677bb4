"""Multi-process start-up: `jax.distributed.initialize` when asked or when the cluster says so.

`main.py --distributed=auto` (the default) initialises when the environment describes a
multi-process job: an explicit coordinator (`JAX_COORDINATOR_ADDRESS`), SLURM or Open MPI
with more than one task, or a multi-host Cloud TPU slice. JAX then finds the coordinator,
the process count and this process's index from that environment. `true` always
initialises (JAX auto-detects or fails loudly); `false` never does.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import jax

logger = logging.getLogger(__name__)

CHOICES = ("auto", "true", "false")


def _count(env: Mapping[str, str], key: str) -> int:
  try:
    return int(env.get(key, "1").split("(")[0])  # SLURM_TASKS_PER_NODE-style "2(x4)"
  except ValueError:
    return 1


def cluster_detected(env: Mapping[str, str] | None = None) -> str | None:
  """The name of the multi-process environment found in `env` (default os.environ), or None."""
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if _count(env, "SLURM_NTASKS") > 1:
    return "SLURM"
  if _count(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  # Every worker of a multi-host TPU slice lists all workers' hostnames.
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "Cloud TPU (multi-host)"
  return None


def maybe_initialize(choice: str = "auto", env: Mapping[str, str] | None = None) -> bool:
  """Calls `jax.distributed.initialize()` if `choice` (auto|true|false) says so.

  Must run before anything touches a JAX device. Returns whether it initialised.
  """
  if choice not in CHOICES:
    raise ValueError(f"distributed={choice!r} is not one of {CHOICES}")
  reason = "requested" if choice == "true" else cluster_detected(env) if choice == "auto" else None
  if reason is None:
    return False
  jax.distributed.initialize()
  logger.info("jax.distributed initialised (%s): process %d of %d, %d devices", reason,
              jax.process_index(), jax.process_count(), jax.device_count())
  return True
