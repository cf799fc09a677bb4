"""The command line on a gs:// workdir, as pod users run it (GCS emulator on 127.0.0.1).

For DPR and ANCE smoke configs: `main.py --workdir=gs://bucket/run` trains and stops at step 3,
the same command resumes to the end (equal to an uninterrupted local run), `--mode=eval`
evaluates the bucket's checkpoint again, `eval/retrieval.py --model=gs://bucket/run` too, and
TensorBoard reads the events from the bucket. Each recipe runs five processes: `slow`. The
in-process version (default suite) is in test_train.py.
"""

import json
import re
import subprocess
import sys

import pytest

from retrieval_jax import metric_writer, run_config
from tests.helpers import REPO, one_device_xla_flags, restore_towers

pytestmark = pytest.mark.slow


def _run(args, env, check=True):
  result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
  if check and result.returncode:
    raise AssertionError(f"{args} exited {result.returncode}:\n{result.stderr[-4000:]}")
  return result


def _params(workdir):
  query, passage, step = restore_towers(run_config.load_config(workdir), workdir)
  return step, [query.params, passage.params]


def _worst(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("recipe", ["dpr", "ance"])
def test_command_line_on_a_gcs_workdir(recipe, gcs_server, gcs_bucket, tmp_path):
  import os  # pylint: disable=g-import-not-at-top

  env = {**os.environ, **gcs_server.environment(), "XLA_FLAGS": one_device_xla_flags(),
         "JAX_PLATFORMS": "cpu"}
  config = [f"--config=configs/{recipe}.py:smoke", "--config.train.num_steps=6"]
  if recipe == "ance":  # refreshes at fixed steps, so that two runs can be compared
    config.append("--config.negatives.refresh_mode=sync")
  workdir = f"{gcs_bucket}/run"
  _run(["main.py", *config, f"--workdir={workdir}", "--config.train.stop_at_step=3"], env)
  resumed = _run(["main.py", *config, f"--workdir={workdir}"], env)
  local = tmp_path / "local"
  straight = _run(["main.py", *config, f"--workdir={local}"], env)
  step, params = _params(workdir)
  assert step == 6
  worst = _worst(params, _params(local)[1])
  print(f"[measured] {recipe} smoke on gs://, stopped at 3 and resumed vs local straight: "
        f"params max abs {worst:.1e}")
  assert worst <= 1e-6

  def table(stdout):
    return dict(re.findall(r"^(dev/\S+)\s+([\d.]+)$", stdout, flags=re.M))

  assert table(resumed.stdout) and table(resumed.stdout) == table(straight.stdout)
  again = _run(["main.py", *config, f"--workdir={workdir}", "--mode=eval"], env)
  assert table(again.stdout) == table(straight.stdout)
  out = f"{workdir}/cli_eval"
  cli = _run(["eval/retrieval.py", f"--model={workdir}", "--data=synthetic", "--split=dev",
              "--max_length=32", "--metrics=ndcg@10,recall@10", "--depth=10", f"--out={out}",
              "--noprogress"], env)
  assert "step 6" in cli.stdout
  from etils import epath  # pylint: disable=g-import-not-at-top

  metrics = json.loads((epath.Path(out) / "metrics.json").read_text())
  assert metrics["ndcg@10"] == pytest.approx(float(table(straight.stdout)["dev/ndcg@10"]),
                                             abs=1e-4)
  scalars = metric_writer.read_scalars(f"{workdir}/tensorboard")
  assert {step for step, _ in scalars["train/loss"]} >= {1, 3, 6}
  assert "dev/ndcg@10" in scalars
