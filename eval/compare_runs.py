r"""Compares retrieval runs query by query: mean, paired difference, 95% CI, p-value.

Each `--runs` entry is an evaluation directory holding `run.trec` (what `eval/retrieval.py
--out` and training evaluations write), or a training workdir (its newest
`eval/step_<N>/<evaluator>/`, the evaluator named by `--evaluator`).
The first run is the baseline; every other run is compared with it on the judged queries of
`--data` / `--split` (paired bootstrap interval and sign-flip randomisation test).

  python eval/compare_runs.py --data=scifact --split=dev \
      --runs=runs/dpr_cpu,runs/ance_cpu,runs/ance_sync --metric=ndcg@10
"""

from __future__ import annotations

import os
import pathlib
import re

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "Evaluation directories (with run.trec) or training workdirs; "
                  "the first is the baseline.", required=True)
flags.DEFINE_string("data", "scifact", "BEIR directory or data set name (for the qrels).")
flags.DEFINE_string("split", "dev", "Qrels split.")
flags.DEFINE_string("evaluator", "dev", "For training workdirs: the config.evals entry whose "
                    "run is compared.")
flags.DEFINE_float("dev_fraction", 0.2, "Share of train queries carved out as dev.")
flags.DEFINE_string("metric", "ndcg@10", "One metric name (see retrieval_jax.metrics).")
flags.DEFINE_integer("samples", 10000, "Bootstrap resamples and sign flips.")


def run_file(path: str | os.PathLike, evaluator: str = "dev") -> pathlib.Path:
  """`path/run.trec`; for a training workdir the run of `evaluator` at its newest step; for
  an evaluation-only workdir (`configs/zeroshot.py`) its `eval/<evaluator>/run.trec`.

  Raises:
    FileNotFoundError: naming the path, when none exists.
  """
  path = pathlib.Path(path)
  if (path / "run.trec").exists():
    return path / "run.trec"
  steps = [p for p in (path / "eval").glob("step_*") if (p / evaluator / "run.trec").exists()]
  if steps:
    newest = max(steps, key=lambda p: int(re.sub(r"\D", "", p.name)))
    return newest / evaluator / "run.trec"
  if (path / "eval" / evaluator / "run.trec").exists():
    return path / "eval" / evaluator / "run.trec"
  raise FileNotFoundError(f"{path}: no run.trec, no eval/step_<N>/{evaluator}/run.trec of a "
                          f"training workdir and no eval/{evaluator}/run.trec of an "
                          "evaluation-only one")


def compare(paths, qrels, metric: str, samples: int = 10000, evaluator: str = "dev"
            ) -> list[dict]:
  """Rows of the table: one per run, the first being the baseline."""
  from retrieval_jax import metrics  # pylint: disable=g-import-not-at-top

  per_query = [{q: v[metric] for q, v in metrics.evaluate_per_query(
      qrels, metrics.read_trec_run(run_file(p, evaluator)), [metric]).items()} for p in paths]
  rows = [{"run": str(paths[0]), "mean": sum(per_query[0].values()) / len(per_query[0])}]
  for path, values in zip(paths[1:], per_query[1:]):
    result = metrics.paired_comparison(per_query[0], values, num_samples=samples)
    rows.append({"run": str(path), "mean": result.mean_b, "diff": result.mean_diff,
                 "ci": (result.ci_low, result.ci_high), "p": result.p_value,
                 "wins/losses": f"{result.wins}/{result.losses}"})
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from retrieval_jax.data.beir import load_beir  # pylint: disable=g-import-not-at-top

  for path in FLAGS.runs:  # a missing run is the user's input: one line, before any work
    try:
      run_file(path, FLAGS.evaluator)
    except FileNotFoundError as error:
      raise app.UsageError(str(error)) from None
  data = load_beir(FLAGS.data, FLAGS.split, dev_fraction=FLAGS.dev_fraction)
  rows = compare(FLAGS.runs, data.qrels, FLAGS.metric, FLAGS.samples, FLAGS.evaluator)
  width = max(len(r["run"]) for r in rows)
  print(f"{'run':<{width}}  {FLAGS.metric:>8}  {'vs first':>8}  {'95% CI':>17}  {'p':>6}  "
        f"wins/losses  ({len(data.qrels)} queries)")
  for row in rows:
    extra = ""
    if "diff" in row:
      extra = (f"  {row['diff']:>+8.4f}  [{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]  "
               f"{row['p']:>6.3f}  {row['wins/losses']:>11}")
    print(f"{row['run']:<{width}}  {row['mean']:>8.4f}{extra}")


if __name__ == "__main__":
  app.run(main)
