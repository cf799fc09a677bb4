r"""The SG-OPT table from the runs `eval/sgopt_table.sh` made: STS-B dev Spearman of MiniLM's
[CLS] and mean pooling before training, and after SG-OPT and plain SG, mean ± standard
deviation over seeds.

  python eval/sgopt_table.py --runs=runs/sgopt_table --out=runs/sgopt_table/table.json

A trained run contributes its best dev evaluation (the checkpoint the run keeps: selected on
dev, so an optimistic number) and its last step's (no selection). Missing runs print as "–";
only runs the queue finished count (a run in progress is named under the table).
"""

from __future__ import annotations

import json
import pathlib
import re
import statistics

from absl import app, flags

if __package__:
  from . import run_tables  # pylint: disable=g-import-not-at-top
else:  # Run as a script: eval/ is first on sys.path.
  import run_tables  # pylint: disable=g-import-not-at-top

_RUNS = flags.DEFINE_string("runs", "runs/sgopt_table", "The directory eval/sgopt_table.sh wrote.")
_OUT = flags.DEFINE_string("out", None, "Write the table as JSON here too.")

BASELINES = (("minilm_cls", "MiniLM [CLS], before training"),
             ("minilm_mean", "MiniLM mean pooling, before training"))
TRAINED = (("sgopt", "MiniLM [CLS] + SG-OPT (`cpu`)"), ("sg", "MiniLM [CLS] + SG (`sg_cpu`)"))


def evaluations(workdir: pathlib.Path) -> dict[int, float]:
  """Dev Spearman by step of a training run's `sts_dev` evaluations."""
  found = {}
  for path in workdir.glob("eval/step_*/sts_dev/metrics.json"):
    found[int(re.sub(r"\D", "", path.parent.parent.name))] = json.loads(path.read_text())["spearman"]
  return found


def _summary(values: list[float]) -> dict | None:
  if not values:
    return None
  return {"mean": statistics.fmean(values),
          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
          "min": min(values), "max": max(values), "n": len(values)}


def collect(runs: pathlib.Path) -> dict:
  rows, in_progress = [], []
  for name, label in BASELINES:
    path = runs / name / "metrics.json"
    done = run_tables.finished(runs, name) and path.exists()
    value = json.loads(path.read_text())["spearman"] if done else None
    rows.append({"row": label, "best": _summary([value] if value is not None else []),
                 "last": None, "seeds": {}})
  for prefix, label in TRAINED:
    seeds = {}
    for workdir in sorted(runs.glob(f"{prefix}_s*")):
      if not workdir.is_dir():
        continue
      if not run_tables.finished(runs, workdir.name):
        in_progress.append(workdir.name)
        continue
      found = evaluations(workdir)
      if not found:
        continue
      best_step = max(found, key=lambda s: (found[s], -s))
      last_step = max(found)
      seeds[workdir.name] = {"best": found[best_step], "best_step": best_step,
                             "last": found[last_step], "last_step": last_step}
    rows.append({"row": label, "seeds": seeds,
                 "best": _summary([s["best"] for s in seeds.values()]),
                 "last": _summary([s["last"] for s in seeds.values()])})
  return {"runs": str(runs), "rows": rows, "in_progress": in_progress}


def _cell(summary: dict | None) -> str:
  if not summary:
    return "–"
  if summary["n"] == 1:
    return f"{summary['mean']:.2f}"
  return (f"{summary['mean']:.2f} ± {summary['std']:.2f} "
          f"({summary['min']:.2f}–{summary['max']:.2f}, {summary['n']} seeds)")


def markdown(result: dict) -> str:
  lines = ["| model | dev Spearman ×100: best dev evaluation | at the last step | best steps |",
           "|---|---|---|---|"]
  for row in result["rows"]:
    steps = ", ".join(str(s["best_step"]) for s in row["seeds"].values()) or "–"
    lines.append(f"| {row['row']} | {_cell(row['best'])} | {_cell(row['last'])} | {steps} |")
  if result["in_progress"]:
    lines.append(f"\nNot finished, left out: {', '.join(result['in_progress'])}")
  return "\n".join(lines)


def main(argv):
  del argv
  return run_tables.print_table(_RUNS.value, _OUT.value, collect, markdown)


if __name__ == "__main__":
  app.run(main)
