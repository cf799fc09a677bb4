r"""Chang et al. 2020's Table 3 shape from the runs `eval/chang_table.sh` made: ReQA SQuAD
R@1/5/10/50/100 per model row and fine-tuning fraction, with each run's wall time and the
pre-training throughput.

  python eval/chang_table.py --runs=runs/chang_table --out=runs/chang_table/table.json

Rows: BM25; BoW-MLP without and with ICT+BFS+WLP pre-training; the Transformer without
pre-training, with ICT, BFS, WLP and ICT+BFS+WLP. A cell is the fine-tuned run's final `reqa`
evaluation (`DIR/ft_<row>_<1|5|80>/eval/step_<N>/reqa/metrics.json`); BM25 has no fine-tuning,
so its one evaluation fills every column. Missing runs print as "–".
"""

from __future__ import annotations

import json
import pathlib
import re

from absl import app, flags

if __package__:
  from . import run_tables  # pylint: disable=g-import-not-at-top
else:  # Run as a script: eval/ is first on sys.path.
  import run_tables  # pylint: disable=g-import-not-at-top

_RUNS = flags.DEFINE_string("runs", "runs/chang_table", "The directory eval/chang_table.sh wrote.")
_OUT = flags.DEFINE_string("out", None, "Write the table as JSON here too.")

ROWS = (("bm25", "BM25 (bm25s, k1 0.9, b 0.4)", None),
        ("bow_none", "BoW-MLP, no pre-training", None),
        ("bow_mix", "BoW-MLP + ICT+BFS+WLP", "bow_mix"),
        ("none", "Transformer, no pre-training", None),
        ("ict", "Transformer + ICT", "ict"),
        ("bfs", "Transformer + BFS", "bfs"),
        ("wlp", "Transformer + WLP", "wlp"),
        ("mix", "Transformer + ICT+BFS+WLP", "mix"))
FRACTIONS = (("1", "1%"), ("5", "5%"), ("80", "80%"))
CUTOFFS = (1, 5, 10, 50, 100)


def _times(runs: pathlib.Path) -> dict[str, str]:
  path = runs / "times.tsv"
  if not path.exists():
    return {}
  return dict(line.split("\t")[:2] for line in path.read_text().splitlines() if "\t" in line)


def final_metrics(workdir: pathlib.Path) -> dict | None:
  """The `reqa` metrics of a run's last evaluated step (an evaluation-only run: its own)."""
  if (workdir / "metrics.json").exists():
    return json.loads((workdir / "metrics.json").read_text())
  found = sorted(workdir.glob("eval/step_*/reqa/metrics.json"),
                 key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name)))
  return json.loads(found[-1].read_text()) if found else None


def throughput(workdir: pathlib.Path) -> float | None:
  """Median logged pairs/s of a pre-training run (its steady state, compile excluded)."""
  log = workdir / "tensorboard" / "metrics.jsonl"
  if not log.exists():
    return None
  rates = sorted(r["train/examples_per_s"] for r in map(json.loads, log.read_text().splitlines())
                 if "train/examples_per_s" in r)
  return rates[len(rates) // 2] if rates else None


def collect(runs: pathlib.Path) -> dict:
  times = _times(runs)
  table = []
  for key, label, pretraining in ROWS:
    row = {"row": label, "cells": {}, "seconds": {}}
    for tag, _ in FRACTIONS:
      name = "bm25" if key == "bm25" else f"ft_{key}_{tag}"
      row["cells"][tag] = (final_metrics(runs / name) if run_tables.finished(runs, name)
                           else None)
      row["seconds"][tag] = times.get(name)
    if pretraining:
      row["pretraining"] = {"seconds": times.get(f"pre_{pretraining}"),
                            "pairs_per_s": throughput(runs / f"pre_{pretraining}")}
    table.append(row)
  return {"runs": str(runs), "rows": table}


def _cell(metrics: dict | None) -> str:
  if not metrics:
    return "–"
  return " / ".join(f"{100 * metrics[f'recall@{k}']:.1f}" for k in CUTOFFS)


def markdown(result: dict) -> str:
  lines = ["| model | " + " | ".join(f"{name}: R@1 / 5 / 10 / 50 / 100" for _, name in FRACTIONS)
           + " | time (pre-training; fine-tuning 1 / 5 / 80%) |",
           "|---|" + "---|" * (len(FRACTIONS) + 1)]
  for row in result["rows"]:
    pre = row.get("pretraining") or {}
    pre_text = ""
    if pre.get("seconds"):
      rate = pre.get("pairs_per_s")
      pre_text = f"{int(pre['seconds']) / 60:.0f} min" + (f" at {rate:.0f} pairs/s" if rate else "") + "; "
    seconds = [row["seconds"][tag] for tag, _ in FRACTIONS]
    fine = " / ".join(f"{int(s) / 60:.1f}" if s and s.isdigit() else "–" for s in seconds)
    lines.append(f"| {row['row']} | " + " | ".join(_cell(row["cells"][tag]) for tag, _ in FRACTIONS)
                 + f" | {pre_text}{fine} min |")
  return "\n".join(lines)


def main(argv):
  del argv
  return run_tables.print_table(_RUNS.value, _OUT.value, collect, markdown)


if __name__ == "__main__":
  app.run(main)
