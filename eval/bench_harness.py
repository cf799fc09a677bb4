"""What every benchmark shares: where it ran, alternating timed rounds, paired ratios, JSON out.

A speed ratio means little without the machine it was measured on (XLA:CPU and PyTorch gain
differently from AVX-512 and AMX), so each benchmark's JSON carries `environment()`: the CPU's
model and vector extensions, the cores this process may use, thread settings, XLA flags and
library versions. Timings alternate the sides in ABBA order (A, B, B, A, ...) so that load from
other processes on a shared machine hits every side alike, and ratios are reported three ways:
of the median rates, as the median of each round's back-to-back ratio (which cancels slow load
drift), and of the best rounds (noise only ever adds time).
"""

from __future__ import annotations

import gc
from importlib import metadata
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from retrieval_jax import host_malloc

# The vector extensions that decide which kernels XLA:CPU, oneDNN and PyTorch can use.
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
# Environment variables that set thread counts, the compiler's behaviour or the C allocator
# (a preloaded tcmalloc, glibc's tunables: XLA:CPU's step time depends on them).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS",
              "JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "LD_PRELOAD", "GLIBC_TUNABLES",
              "MALLOC_ARENA_MAX")
LIBRARIES = ("retrieval_jax", "jax", "jaxlib", "flax", "optax", "numpy", "tokenizers",
             "transformers", "torch", "sentence-transformers", "scann", "faiss-cpu", "hnswlib",
             "usearch", "llama_cpp_python")


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
  blocks, current = [], {}
  for line in text.splitlines():
    if not line.strip():
      if current:
        blocks.append(current)
      current = {}
    elif ":" in line:
      key, value = line.split(":", 1)
      current[key.strip()] = value.strip()
  if current:
    blocks.append(current)
  return blocks


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
  """The CPU as /proc/cpuinfo describes it (elsewhere: `platform`'s names only).

  Args:
    cpuinfo: /proc/cpuinfo's text (read from the file when None).

  Returns:
    model, vendor, `flags` (those of `CPU_FLAGS` present), logical CPUs, physical cores (by
    distinct physical id and core id), and the CPUs this process may run on.
  """
  if cpuinfo is None:
    try:
      cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
      cpuinfo = ""
  blocks = [b for b in _cpuinfo_blocks(cpuinfo) if "processor" in b]
  first = blocks[0] if blocks else {}
  present = set(first.get("flags", "").split())
  cores = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
  return {"model": first.get("model name") or platform.processor() or platform.machine(),
          "vendor": first.get("vendor_id"), "architecture": platform.machine(),
          "flags": [f for f in CPU_FLAGS if f in present],
          "logical_cpus": len(blocks) or os.cpu_count(),
          "physical_cores": len(cores) or None, "usable_cpus": usable_cpus()}


def usable_cpus() -> int:
  """The CPUs this process may run on (its affinity)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def cpu_model() -> str:
  """The CPU's model name, e.g. "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"."""
  return cpu_info()["model"]


def cpu_line(info: Mapping[str, Any]) -> str:
  """One line for a table's header: model, extensions that matter, cores."""
  flags = info["flags"]
  wide = [f for f in ("avx512f", "avx512_bf16", "amx_tile") if f in flags]
  vector = ", ".join(wide) if wide else ("avx2" if "avx2" in flags else "no avx2")
  return f"{info['model']} ({vector}; {info['usable_cpus']} CPUs)"


def versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
  """Installed versions of `names` (absent ones left out), and Python's."""
  found = {"python": platform.python_version()}
  for name in names:
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return found


def thread_settings() -> dict[str, Any]:
  """Thread-related environment variables, and the thread counts of libraries already loaded."""
  out: dict[str, Any] = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
  torch = sys.modules.get("torch")
  if torch is not None:
    out["torch_threads"] = torch.get_num_threads()
    out["torch_interop_threads"] = torch.get_num_interop_threads()
  return out


def environment() -> dict[str, Any]:
  """Where a benchmark ran: CPU, threads, XLA flags, C heap, JAX's devices (if loaded), versions."""
  env = {"cpu": cpu_info(), "threads": thread_settings(),
         "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc": host_malloc.describe(),
         "versions": versions()}
  jax = sys.modules.get("jax")
  if jax is not None:
    env["jax_backend"] = jax.default_backend()
    env["jax_devices"] = jax.device_count()
  return env


def load() -> list[float]:
  """The 1-, 5- and 15-minute load averages."""
  return [round(x, 2) for x in os.getloadavg()]


def busy_processes(min_cpu: float = 20.0) -> list[dict[str, Any]]:
  """Other processes using at least `min_cpu` % of a core (`ps`), to read timings by."""
  try:
    lines = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,args", "--no-headers"], check=True,
                           capture_output=True, text=True, timeout=10).stdout.splitlines()
  except (OSError, subprocess.SubprocessError):
    return []
  busy = []
  for line in lines:
    pid, ppid, cpu, command = (line.split(None, 3) + [""])[:4]
    if int(pid) != os.getpid() and int(ppid) != os.getpid() and float(cpu) >= min_cpu:
      busy.append({"pid": int(pid), "cpu_percent": float(cpu), "command": command[:120]})
  return sorted(busy, key=lambda p: -p["cpu_percent"])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  """(seconds, result) of `fn()`, after a garbage collection."""
  gc.collect()  # A collection inside one side's timing would bill it for the other's garbage.
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


def alternate(sides: Mapping[str, Callable[[], Any]], rounds: int, *,
              log: Callable[[str], None] | None = None
              ) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
  """Times each side once per round, in ABBA order.

  Args:
    sides: name -> a call to time (already warmed up).
    rounds: Rounds; even rounds run the sides in order, odd ones reversed.
    log: Called with a line after each timing.

  Returns:
    (name -> seconds per round, name -> its calls' results per round).
  """
  if rounds < 1:
    raise ValueError(f"rounds={rounds}: must be at least 1")
  seconds: dict[str, list[float]] = {name: [] for name in sides}
  results: dict[str, list[Any]] = {name: [] for name in sides}
  names = list(sides)
  for round_ in range(rounds):
    for name in names if round_ % 2 == 0 else names[::-1]:
      elapsed, result = timed(sides[name])
      seconds[name].append(elapsed)
      results[name].append(result)
      if log:
        log(f"round {round_ + 1} {name}: {elapsed:.2f} s")
  return seconds, results


def speed_ratio(fast_seconds: Sequence[float], slow_seconds: Sequence[float]) -> dict[str, Any]:
  """How many times faster side A is than side B, from their per-round seconds.

  Args:
    fast_seconds: Side A's seconds per round (the numerator's side, "ours").
    slow_seconds: Side B's, the same rounds, for the same work.

  Returns:
    `ratio` (B's median seconds over A's), `ratio_paired_median` (median over rounds of
    B's seconds over A's in that round), `ratio_best` (B's fastest round over A's) and
    `ratio_per_round`.
  """
  if len(fast_seconds) != len(slow_seconds) or not fast_seconds:
    raise ValueError("speed_ratio needs the same, non-zero number of rounds on both sides")
  per_round = [b / a for a, b in zip(fast_seconds, slow_seconds)]
  return {"ratio": statistics.median(slow_seconds) / statistics.median(fast_seconds),
          "ratio_paired_median": statistics.median(per_round),
          "ratio_best": min(slow_seconds) / min(fast_seconds), "ratio_per_round": per_round}


def paired_median(per_round: Mapping[str, Sequence[float]], a: str, b: str) -> float:
  """The median over rounds of a's rate over b's in the same round."""
  return statistics.median(x / y for x, y in zip(per_round[a], per_round[b]))


def alternating_rounds(runners: Mapping[str, tuple[Any, Callable, Sequence[Any]]], *,
                       steps: int, rounds: int, warmup_steps: int) -> dict[str, list[float]]:
  """Steps/s of jitted training steps per round, alternating the runners in ABBA order.

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

  def side(name):
    def run_steps():
      _, step, batches = runners[name]
      state = states[name]
      for i in range(warmup_steps, warmup_steps + steps):
        state, metrics = step(state, {}, batches[i])
      jax.block_until_ready(metrics["loss"])
      states[name] = state
    return run_steps

  seconds, _ = alternate({name: side(name) for name in runners}, rounds)
  return {name: [steps / s for s in values] for name, values in seconds.items()}


def write_json(result: Mapping[str, Any], out: str | os.PathLike | None) -> None:
  """Writes `result` as indented JSON to `out` (directories created) and says so."""
  if not out:
    return
  path = pathlib.Path(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {path}")
