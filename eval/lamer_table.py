r"""The LameR table from the runs `eval/lamer_table.sh` made, on SciFact dev.

  python eval/lamer_table.py --runs=runs/lamer_table --out=runs/lamer_table/table.json

Every row is compared with plain BM25 on the same queries, query by query (paired bootstrap
95% interval of the nDCG@10 difference, sign-flip p-value). The greedy runs are compared with
each other too: the in-process model against llama.cpp serving the float32 file (the same
weights, so the same answers) and the Q4_1 file (llama.cpp's quantised arithmetic): how many
answers are identical, and the paired difference of their rankings. Only runs the queue
finished count; missing ones print as "–".
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

from retrieval_jax import metrics
from retrieval_jax.data import splits

if __package__:
  from . import run_tables  # pylint: disable=g-import-not-at-top
else:  # Run as a script: eval/ is first on sys.path.
  import run_tables  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
METRIC = "ndcg@10"
SHOWN = ("ndcg@10", "mrr@10", "recall@100")
# (run directory, row label, where its run.trec is: the lamer evaluator's or eval/retrieval.py's)
ROWS = (
    ("lamer_jax", "LameR, SmolLM2 in process, N = 5 sampled (T = 1)", "eval/dev"),
    ("lamer_jax_greedy", "LameR, SmolLM2 in process, greedy", "eval/dev"),
    ("lamer_llamacpp_f32_greedy", "LameR, HTTP → llama.cpp, float32 file, greedy", "eval/dev"),
    ("lamer_llamacpp_q41_greedy", "LameR, HTTP → llama.cpp, Q4_1 file, greedy", "eval/dev"),
    ("minilm", "MiniLM (dense, query alone)", "."),
    ("hyde_jax", "HyDE, SmolLM2 (8 passages, T = 0.7) + MiniLM", "eval/dev"),
)
GREEDY_PAIRS = (("lamer_jax_greedy", "lamer_llamacpp_f32_greedy"),
                ("lamer_jax_greedy", "lamer_llamacpp_q41_greedy"))


def _per_query(qrels, run) -> dict[str, float]:
  return {q: v[METRIC] for q, v in metrics.evaluate_per_query(qrels, run, [METRIC]).items()}


def _answers(path: pathlib.Path) -> dict[str, list[str]]:
  lines = (path / "eval/dev/generations.jsonl").read_text().splitlines()
  return {row["query_id"]: row["answers"] for row in map(json.loads, lines)}


def _comparison(qrels, baseline, run) -> dict:
  c = metrics.paired_comparison(_per_query(qrels, baseline), _per_query(qrels, run))
  return {"diff": c.mean_diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p_value}


def collect(runs: pathlib.Path) -> dict:
  data = splits.load_split("scifact", "dev")
  qrels = data.qrels
  done = {name: runs / name / where for name, _, where in ROWS
          if run_tables.finished(runs, name) and (runs / name / where / "run.trec").exists()}
  bm25_file = next((d / "bm25_run.trec" for d in done.values()
                    if (d / "bm25_run.trec").exists()), None)
  bm25 = metrics.read_trec_run(bm25_file) if bm25_file else None
  rows = []
  if bm25 is not None:
    rows.append({"run": "bm25", "row": "BM25 (k1 0.9, b 0.4)",
                 "metrics": metrics.evaluate(qrels, bm25, SHOWN), "vs_bm25": None})
  for name, label, _ in ROWS:
    if name not in done:
      rows.append({"run": name, "row": label, "metrics": None, "vs_bm25": None})
      continue
    run = metrics.read_trec_run(done[name] / "run.trec")
    info_file = done[name] / "eval_info.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    rows.append({"run": name, "row": label, "metrics": metrics.evaluate(qrels, run, SHOWN),
                 "vs_bm25": _comparison(qrels, bm25, run) if bm25 is not None else None,
                 "generate_s": info.get("timings", {}).get("generate_s")})
  pairs = []
  for a, b in GREEDY_PAIRS:
    if a in done and b in done:
      left, right = _answers(runs / a), _answers(runs / b)
      same = sum(left[q][0] == right[q][0] for q in left)
      pairs.append({"a": a, "b": b, "identical_answers": same, "queries": len(left),
                    **_comparison(qrels, metrics.read_trec_run(done[a] / "run.trec"),
                                  metrics.read_trec_run(done[b] / "run.trec"))})
  return {"data": "scifact/dev", "queries": len(data.query_ids), "rows": rows,
          "greedy_pairs": pairs,
          "in_progress": [n for n, _, _ in ROWS if n not in done and (runs / n).exists()]}


def _number(value, scale=100.0, digits=1):
  return "–" if value is None else f"{value * scale:.{digits}f}"


def markdown(result: dict) -> str:
  lines = [f"SciFact dev ({result['queries']} queries), ×100; Δ = paired difference of "
           f"{METRIC} against BM25 with its 95% bootstrap interval",
           "| run | nDCG@10 | MRR@10 | R@100 | Δ nDCG@10 vs BM25 [95% CI] | generation |",
           "|---|---|---|---|---|---|"]
  for row in result["rows"]:
    m = row["metrics"] or {}
    vs = row["vs_bm25"]
    delta = ("" if vs is None else
             f"{vs['diff'] * 100:+.1f} [{vs['ci_low'] * 100:+.1f}, {vs['ci_high'] * 100:+.1f}]")
    seconds = row.get("generate_s")
    timing = "" if not seconds else f"{seconds / 60:.0f} min"
    lines.append(f"| {row['row']} | {_number(m.get('ndcg@10'))} | {_number(m.get('mrr@10'))} "
                 f"| {_number(m.get('recall@100'))} | {delta} | {timing} |")
  for pair in result["greedy_pairs"]:
    lines.append(f"\n{pair['a']} vs {pair['b']}: {pair['identical_answers']}/{pair['queries']} "
                 f"identical answers; {METRIC} difference {pair['diff'] * 100:+.2f} "
                 f"[{pair['ci_low'] * 100:+.2f}, {pair['ci_high'] * 100:+.2f}]")
  if result["in_progress"]:
    lines.append(f"\nnot finished: {', '.join(result['in_progress'])}")
  return "\n".join(lines)


def main(argv):
  del argv
  sys.exit(run_tables.print_table(FLAGS.runs, FLAGS.out, collect, markdown))


if __name__ == "__main__":
  flags.DEFINE_string("runs", "runs/lamer_table", "The directory eval/lamer_table.sh wrote.")
  flags.DEFINE_string("out", None, "Write the table as JSON here too.")
  app.run(main)
