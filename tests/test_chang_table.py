"""`eval/chang_table.py`: the Chang et al. table from a directory of runs (written here)."""

import json

from tests.helpers import run_python


def _metrics(base, value):
  return {**{f"recall@{k}": value + k / 1000 for k in (1, 5, 10, 50, 100)}, "mrr": value}


def test_table_from_runs(tmp_path):
  runs = tmp_path / "runs"
  (runs / "bm25").mkdir(parents=True)
  (runs / "bm25" / "metrics.json").write_text(json.dumps(_metrics(runs, 0.5)))
  for run in ("ft_mix_1", "ft_mix_80"):  # the last evaluated step of a finished run counts
    for step, value in ((100, 0.1), (300, 0.4)):
      out = runs / run / "eval" / f"step_{step}" / "reqa"
      out.mkdir(parents=True)
      (out / "metrics.json").write_text(json.dumps(_metrics(runs, value)))
  for run in ("bm25", "ft_mix_1"):  # ft_mix_80 is still training: no marker
    (runs / f"{run}.done").touch()
  log = runs / "pre_mix" / "tensorboard"
  log.mkdir(parents=True)
  log.joinpath("metrics.jsonl").write_text("\n".join(
      json.dumps({"step": s, "train/examples_per_s": r}) for s, r in ((1, 10.0), (2, 60.0), (3, 70.0))))
  (runs / "times.tsv").write_text("bm25\t15\npre_mix\t900\nft_mix_1\t120\nft_mix_5\tFAILED\n")
  result = run_python(["eval/chang_table.py", f"--runs={runs}", f"--out={tmp_path / 't.json'}"])
  lines = result.stdout.splitlines()
  bm25 = next(line for line in lines if line.startswith("| BM25"))
  assert bm25.count("50.1 / 50.5 / 51.0 / 55.0 / 60.0") == 3
  mix = next(line for line in lines if "ICT+BFS+WLP" in line and "Transformer" in line)
  assert "40.1 / 40.5 / 41.0 / 45.0 / 50.0 | – | –" in mix
  assert "15 min at 60 pairs/s; 2.0 / – / – min" in mix
  table = json.loads((tmp_path / "t.json").read_text())
  assert table["rows"][-1]["cells"]["1"]["mrr"] == 0.4


def test_missing_directory_is_one_error_line(tmp_path):
  result = run_python(["eval/chang_table.py", f"--runs={tmp_path / 'none'}"], check=False)
  assert result.returncode == 1 and result.stderr.strip() == (
      f"error: --runs={tmp_path / 'none'} is not a directory")
