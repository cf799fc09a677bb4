"""Shared by the step benchmarks: the CPU's name, and jitted steps timed in alternating rounds.

Alternating rounds (step A for n steps, then B, then A, ...) let a load change on a shared
machine hit every step alike, so their ratio per round is what a benchmark reports.
"""

from __future__ import annotations

import pathlib
import platform
import time
from typing import Any, Callable, Mapping, Sequence


def cpu_model() -> str:
  """/proc/cpuinfo's first "model name" (else `platform.processor()`)."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def alternating_rounds(runners: Mapping[str, tuple[Any, Callable, Sequence[Any]]], *,
                       steps: int, rounds: int, warmup_steps: int) -> dict[str, list[float]]:
  """Steps/s of each runner per round.

  Args:
    runners: name -> (state, step, batches): `step(state, {}, batch) -> (state, metrics)`
      jitted, `batches[i]` the i-th batch on device (`warmup_steps + steps` of them).
    steps: Timed steps per round.
    rounds: Rounds per runner.
    warmup_steps: Untimed steps first (compilation).
  """
  import jax  # pylint: disable=g-import-not-at-top

  states = {}
  for name, (state, step, batches) in runners.items():
    for i in range(warmup_steps):
      state, _ = step(state, {}, batches[i])
    states[name] = jax.block_until_ready(state)
  per_round: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(rounds):
    for name, (_, step, batches) in runners.items():
      state = states[name]
      start = time.perf_counter()
      for i in range(warmup_steps, warmup_steps + steps):
        state, metrics = step(state, {}, batches[i])
      jax.block_until_ready(metrics["loss"])
      per_round[name].append(steps / (time.perf_counter() - start))
      states[name] = state
  return per_round
