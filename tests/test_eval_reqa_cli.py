"""eval/reqa.py end to end on a tiny SQuAD file: BM25, a training workdir, an HF dir, errors."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import one_device_xla_flags
from tests.test_reqa_data import TINY_SQUAD

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS = {"recall@1", "recall@5", "recall@10", "recall@50", "recall@100", "mrr", "questions",
        "candidates"}


def _run(*args):
  environ = {**os.environ, "XLA_FLAGS": one_device_xla_flags()}
  return subprocess.run([sys.executable, "eval/reqa.py", "--progress=false", *args], cwd=REPO,
                        capture_output=True, text=True, env=environ, timeout=300, check=False)


@pytest.fixture(scope="module")
def squad(tmp_path_factory):
  path = tmp_path_factory.mktemp("squad") / "tiny-v1.1.json"
  path.write_text(json.dumps(TINY_SQUAD))
  return path


def test_bm25_writes_metrics_and_prints_a_table(squad, tmp_path):
  result = _run("--model=bm25", f"--squad={squad}", f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert set(metrics) == KEYS and (metrics["questions"], metrics["candidates"]) == (8, 10)
  assert "8 questions, 10 candidates" in result.stdout
  assert "recall@100" in result.stdout and (tmp_path / "run.trec").exists()


@pytest.mark.parametrize("args,message", [
    (["--model=bm25", "--squad={missing}"], "error: SQuAD file {missing} does not exist"),
    (["--model=bm25", "--squad={squad}", "--train_fraction=1.5"],
     "error: evals.reqa.data.train_fraction=1.5 is not in (0, 1)"),
    (["--model=bm25", "--squad={squad}", "--step=3"], "error: --step needs a training workdir"),
    (["--model={missing}", "--squad={squad}"], "error: model directory {missing} does not exist"),
])
def test_bad_input_is_one_error_line(squad, tmp_path, args, message):
  names = {"missing": tmp_path / "missing.json", "squad": squad}
  result = _run(*(arg.format(**names) for arg in args))
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith(message.format(**names)), result.stderr[-2000:]
  assert "Traceback" not in result.stderr


@pytest.mark.slow  # a training run of its own; tests/test_recipe_chang.py evaluates a workdir
def test_a_training_workdir_and_its_export(squad, tmp_path):
  """A DPR smoke run: its checkpoint through the recipe, then its exported tower as a HF dir."""
  workdir = tmp_path / "dpr"
  environ = {**os.environ, "XLA_FLAGS": one_device_xla_flags()}
  trained = subprocess.run([sys.executable, "main.py", "--config=configs/dpr.py:smoke",
                            f"--workdir={workdir}", "--config.train.progress=false"], cwd=REPO,
                           capture_output=True, text=True, env=environ, timeout=300, check=False)
  assert trained.returncode == 0, trained.stderr[-3000:]
  result = _run(f"--model={workdir}", f"--squad={squad}", "--max_length=64",
                "--train_fraction=0.5", "--candidates=test")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{workdir} step 6: 4 questions, 7 candidates" in result.stdout
  metrics = json.loads((workdir / "eval" / "step_6" / "reqa" / "metrics.json").read_text())
  assert set(metrics) == KEYS
  out = tmp_path / "export_eval"
  result = _run(f"--model={workdir / 'export' / 'passage_encoder'}", f"--squad={squad}",
                "--max_length=64", "--batch_size=8", f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((out / "eval_info.json").read_text())["settings"]["index"] == "exact"
