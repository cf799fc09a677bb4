"""Multi-process JAX: start-up, and the few host-level exchanges the library needs.

Every host runs the same program (JAX's multi-controller model); `jax.distributed.initialize`
joins them, and global arrays span every device of every process. `main.py` calls
`maybe_initialize` before anything touches a device:

- explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`), as the local
  CPU launcher and the SLURM script pass them;
- `--distributed=auto` (the default): initialise when the environment describes a
  multi-process job (`JAX_COORDINATOR_ADDRESS`, SLURM or Open MPI with more than one task, a
  multi-host Cloud TPU slice); JAX then reads the coordinator, the process count and this
  process's index from that environment. `true` always initialises, `false` never does.

On CPU, processes exchange data through gloo collectives (`jax_cpu_collectives_implementation`,
gloo by default in the JAX versions this library requires).

The exchanges below are collectives: every process must call them, in the same order, from its
main thread (a collective issued from a background thread could interleave differently on
different hosts and deadlock). With one process they return their input unchanged.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import numpy as np

from retrieval_jax import options

logger = logging.getLogger(__name__)

CHOICES = options.AUTO_BOOL
# Rows per process share of a corpus come in multiples of this; `index/exact.py` tiles each
# device's rows with the same alignment, which keeps sharded scores bit-identical.
ROW_ALIGNMENT = 128


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


def _check_explicit(coordinator_address: str | None, num_processes: int | None,
                    process_id: int | None) -> bool:
  """Whether explicit flags were given; all three or none, else a ValueError naming them."""
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  missing = [name for name, value in given.items() if value is None]
  if len(missing) == len(given):
    return False
  if missing:
    raise ValueError(f"multi-process flags go together: {', '.join(missing)} missing (given: "
                     f"{', '.join(n for n in given if n not in missing)})")
  if ":" not in coordinator_address:
    raise ValueError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"need --num_processes >= 1 and 0 <= --process_id < --num_processes, got "
                     f"{num_processes} and {process_id}")
  return True


def maybe_initialize(choice: str = "auto", env: Mapping[str, str] | None = None, *,
                     coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` if the flags or `choice` (auto|true|false) say so.

  Must run before anything touches a JAX device.

  Args:
    choice: `--distributed`: auto, true or false (ignored when explicit flags are given).
    env: The environment to detect a cluster in (default os.environ).
    coordinator_address: HOST:PORT of process 0's coordinator (`--coordinator_address`).
    num_processes: Processes in the job (`--num_processes`).
    process_id: This process (`--process_id`).

  Returns:
    Whether it initialised.

  Raises:
    ValueError: An unknown `choice`, or explicit flags that are incomplete or inconsistent.
  """
  wanted = options.auto_bool(choice, "distributed")
  if _check_explicit(coordinator_address, num_processes, process_id):
    reason = f"flags: process {process_id} of {num_processes}, coordinator {coordinator_address}"
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  else:
    reason = ("requested" if wanted else
              cluster_detected(env) if wanted is None else None)
    if reason is None:
      return False
    jax.distributed.initialize()
  logger.info("jax.distributed initialised (%s): process %d of %d, %d local of %d devices",
              reason, jax.process_index(), jax.process_count(), jax.local_device_count(),
              jax.device_count())
  return True


def describe() -> str:
  """One line on this process and the devices it sees (logged by `main.py`)."""
  return (f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local of {jax.device_count()} {jax.default_backend()} "
          "devices")


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def shard_range(num_rows: int, index: int | None = None, count: int | None = None,
                align: int = ROW_ALIGNMENT) -> tuple[int, int]:
  """[start, stop) of process `index`'s contiguous share of `num_rows` rows.

  Shares are whole multiples of `align` rows (except the last), so every row sits at the same
  offset within its matmul tile as in a single-process search (see `index/exact.py`); the last
  processes may get fewer rows, or none.
  """
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  if not 0 <= index < count:
    raise ValueError(f"need 0 <= index < count, got {index}, {count}")
  per = -(-num_rows // count)
  per = -(-per // align) * align
  start = min(index * per, num_rows)
  return start, min(start + per, num_rows)


def _to_32_bits(array: np.ndarray) -> np.ndarray:
  """Device arrays are 32-bit (x64 off): narrow int64 / float64 losslessly or refuse."""
  if array.dtype == np.int64 or array.dtype == np.uint64:
    if array.size and (array.max() >= 2**31 or array.min() < -2**31):
      raise ValueError("integers beyond int32 cannot be exchanged between processes")
    return array.astype(np.int32)
  if array.dtype == np.float64:
    return array.astype(np.float32)
  return array


def allgather_rows(local: np.ndarray) -> np.ndarray:
  """Every process's rows concatenated in process order, on every process (a collective).

  Processes may hold different numbers of rows (the trailing shape must agree). Integer and
  float arrays come back in their own dtype; 64-bit values must fit 32 bits.
  """
  local = np.asarray(local)
  if not is_multiprocess():
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  counts = np.asarray(multihost_utils.process_allgather(np.int32(len(local)))).reshape(-1)
  width = max(int(counts.max()), 1)
  padded = np.zeros((width,) + local.shape[1:], _to_32_bits(local[:0]).dtype)
  padded[:len(local)] = _to_32_bits(local)
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return np.concatenate([gathered[p, :counts[p]] for p in range(len(counts))]).astype(
      local.dtype)


def host_local(tree: Any) -> Any:
  """A tree of global arrays as host numpy arrays, whole, on every process (a collective when
  arrays span processes). For evaluation and export of a model trained on several hosts."""
  if not is_multiprocess():
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def all_true(flag: bool) -> bool:
  """Whether `flag` holds on every process (a collective; one process: `flag`)."""
  return bool(allgather_rows(np.asarray([bool(flag)], np.int32)).all())

