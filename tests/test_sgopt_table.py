"""`eval/sgopt_table.py`: the SG-OPT table from a directory of runs (written here)."""

import json

from tests.helpers import run_python


def _evaluation(runs, run, step, spearman):
  out = runs / run / "eval" / f"step_{step}" / "sts_dev"
  out.mkdir(parents=True)
  (out / "metrics.json").write_text(json.dumps({"spearman": spearman, "pearson": 0.0}))


def test_table_from_runs(tmp_path):
  runs = tmp_path / "runs"
  (runs / "minilm_cls").mkdir(parents=True)
  (runs / "minilm_cls" / "metrics.json").write_text(json.dumps({"spearman": 79.73}))
  for run, scores in {"sgopt_s0": {0: 79.0, 50: 84.0, 100: 83.0},
                      "sgopt_s1": {0: 79.0, 50: 85.0, 100: 86.0},
                      "sgopt_s2": {0: 79.0, 50: 99.0}}.items():
    for step, value in scores.items():
      _evaluation(runs, run, step, value)
  for run in ("minilm_cls", "sgopt_s0", "sgopt_s1"):  # sgopt_s2 is still training
    (runs / f"{run}.done").touch()
  result = run_python(["eval/sgopt_table.py", f"--runs={runs}", f"--out={tmp_path / 't.json'}"])
  lines = result.stdout.splitlines()
  assert "| MiniLM [CLS], before training | 79.73 | – | – |" in lines
  assert "| MiniLM mean pooling, before training | – | – | – |" in lines
  sgopt = next(line for line in lines if "SG-OPT" in line)
  assert "85.00 ± 1.41 (84.00–86.00, 2 seeds)" in sgopt  # best: 84 at 50, 86 at 100
  assert "84.50 ± 2.12 (83.00–86.00, 2 seeds)" in sgopt  # last steps
  assert sgopt.endswith("| 50, 100 |")
  assert lines[-1] == "Not finished, left out: sgopt_s2"
  table = json.loads((tmp_path / "t.json").read_text())
  assert table["rows"][2]["seeds"]["sgopt_s0"] == {"best": 84.0, "best_step": 50, "last": 83.0,
                                                   "last_step": 100}


def test_missing_directory_is_one_error_line(tmp_path):
  result = run_python(["eval/sgopt_table.py", f"--runs={tmp_path / 'none'}"], check=False)
  assert result.returncode == 1 and result.stderr.strip() == (
      f"error: --runs={tmp_path / 'none'} is not a directory")
