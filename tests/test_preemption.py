"""An external SIGTERM to a running `main.py` training: a checkpoint of the current step, a
clean exit with status 143, and the same command resumes from it.

The in-process check that the resumed run equals an uninterrupted one is in test_train.py;
two processes on a gs:// workdir in test_multiprocess.py. A process start and compile take
over a minute on 2 cores: `slow`.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from retrieval_jax import checkpoint, preemption
from tests.helpers import REPO, one_device_xla_flags

pytestmark = pytest.mark.slow


def test_sigterm_to_main_saves_the_current_step_and_exits_143(tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable, str(REPO / "main.py"), "--config=configs/dpr.py:smoke",
             f"--workdir={workdir}", "--mode=train", "--config.train.num_steps=1000000",
             "--config.train.checkpoint_every_steps=1000000", "--config.train.log_every_steps=1"]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True,
                             env={**os.environ, "XLA_FLAGS": one_device_xla_flags(),
                                  "JAX_PLATFORMS": "cpu"})
  training = threading.Event()
  err_lines = []

  def read_stderr():
    for line in process.stderr:
      err_lines.append(line)
      if "step 3:" in line:  # a few steps are done: the loop is running
        training.set()

  reader = threading.Thread(target=read_stderr, daemon=True)
  reader.start()
  try:
    assert training.wait(300), "".join(err_lines[-40:])
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=120)[0]
  finally:
    if process.poll() is None:
      process.kill()
  exited = time.monotonic() - sent
  reader.join(10)
  assert process.returncode == preemption.EXIT_CODE, "".join(err_lines[-40:])
  assert "Traceback" not in "".join(err_lines)
  match = re.search(r"preempted: checkpoint of step (\d+) saved in ([\d.]+) s; rerun", out)
  assert match, out
  step = int(match.group(1))
  assert checkpoint.Checkpointer(workdir).all_steps() == [step] and step >= 3
  print(f"[measured] external SIGTERM: saved step {step} in {float(match.group(2)):.2f} s, "
        f"process exited {exited:.1f} s after the signal")
