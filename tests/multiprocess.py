"""Start N JAX processes on this machine (fake CPU devices, gloo) and always clean them up.

Used by the multi-process tests: each process runs the same command with
`--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I` appended, as
`launch/local_multiprocess.sh` does for users.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def cpu_env(devices: int) -> dict[str, str]:
  """The environment of one process with `devices` fake CPU devices and gloo collectives."""
  # Imported here: helpers imports JAX, which free_port's users need not.
  from tests.helpers import one_device_xla_flags  # pylint: disable=g-import-not-at-top

  env = dict(os.environ)
  flags = f"{one_device_xla_flags()} --xla_force_host_platform_device_count={devices}".strip()
  env.update(XLA_FLAGS=flags,
             JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  return env


@dataclasses.dataclass
class Finished:
  """Exit codes and output of each process."""
  returncodes: list[int]
  logs: list[str]
  seconds: float

  def check(self) -> Finished:
    failed = [i for i, code in enumerate(self.returncodes) if code != 0]
    if failed:
      tails = "\n".join(f"--- process {i} (exit {self.returncodes[i]}):\n"
                        + self.logs[i][-4000:] for i in failed)
      raise AssertionError(f"processes {failed} failed:\n{tails}")
    return self


def run(command: list[str], num_processes: int, devices: int, log_dir: pathlib.Path, *,
        timeout: float = 120.0, multiprocess_flags: bool = True,
        ok_codes: tuple[int, ...] = (0,), env: dict[str, str] | None = None) -> Finished:
  """Runs `command` as `num_processes` processes with `devices` CPU devices each.

  Every process is killed (its whole process group) when one fails (exits with a code not in
  `ok_codes`), on timeout, or if this function is interrupted, so a failing test never
  leaves processes behind. `env` adds variables to each process's environment.
  """
  port = free_port()
  log_dir.mkdir(parents=True, exist_ok=True)
  procs, files = [], []
  start = time.perf_counter()
  try:
    for index in range(num_processes):
      argv = list(command)
      if multiprocess_flags:
        argv += [f"--coordinator_address=127.0.0.1:{port}",
                 f"--num_processes={num_processes}", f"--process_id={index}"]
      log = open(log_dir / f"process_{index}.log", "w")  # pylint: disable=consider-using-with
      files.append(log)
      procs.append(subprocess.Popen(argv, cwd=REPO, env={**cpu_env(devices), **(env or {})},
                                    stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
      if any(p.poll() is not None and p.poll() not in ok_codes for p in procs):
        break  # one failed: the others would wait for it forever
      if time.monotonic() > deadline:
        break
      time.sleep(0.1)
    timed_out = any(p.poll() is None for p in procs) and time.monotonic() > deadline
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
      p.wait()
    for log in files:
      log.close()
  logs = [(log_dir / f"process_{i}.log").read_text() for i in range(num_processes)]
  if timed_out:
    logs = [text + f"\n[killed after the {timeout:.0f} s timeout]" for text in logs]
  return Finished([p.returncode for p in procs], logs, time.perf_counter() - start)


def main_py(*args: str) -> list[str]:
  """`python main.py ARGS` from the repository root."""
  return [sys.executable, str(REPO / "main.py"), *args]
