"""Preemption: a SIGTERM ends training with a checkpoint at the same step on every process.

TPU VMs, SLURM and Kubernetes send SIGTERM some time before they stop a job. The training
loop asks `Preemption.reached(step)` after every step; when it says yes, the loop saves a
checkpoint of that step, waits until it is written, and raises `Preempted`; rerunning the
same command resumes from it.

- Several processes (`jax.distributed`): JAX's preemption service (part of the coordination
  service `jax.distributed.initialize` starts) catches SIGTERM on whichever host receives it,
  tells every process, and agrees on the step to stop at;
  `multihost_utils.reached_preemption_sync_point` is True on every process at that same step.
- One process: a Python SIGTERM handler sets a flag, read at the next step boundary.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

# 128 + SIGTERM, what a shell reports for a job ended by SIGTERM: schedulers and wrappers
# that requeue terminated jobs treat the clean exit the same way.
EXIT_CODE = 128 + int(signal.SIGTERM)


class Preempted(Exception):
  """Training stopped on a preemption notice after saving a checkpoint of `step`."""

  def __init__(self, step: int, save_seconds: float):
    self.step = step
    self.save_seconds = save_seconds
    super().__init__(f"preempted: checkpoint of step {step} saved in {save_seconds:.1f} s; "
                     "rerun the same command to resume")


def _coordinated() -> bool:
  """Whether JAX's preemption service runs (a `jax.distributed` job with the service on)."""
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class Preemption:
  """Watches for a preemption notice between training steps; a context manager.

  Usage:
    with Preemption() as preemption:
      for step in ...:
        ...
        if preemption.reached(step):
          save(step); raise Preempted(...)
  """

  def __init__(self):
    self._notice = threading.Event()
    self._previous = None
    self._installed = False

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self._notice.set()

  def __enter__(self) -> Preemption:
    # The coordination service has its own SIGTERM handler; replacing it would hide the
    # notice from the other processes.
    if not _coordinated() and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def __exit__(self, *exc) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False

  def reached(self, step: int) -> bool:
    """Whether to save `step` and stop; every process calls it at every step."""
    if _coordinated():
      return bool(multihost_utils.reached_preemption_sync_point(int(step)))
    return self._notice.is_set()
