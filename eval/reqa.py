r"""Evaluates a retriever on ReQA SQuAD (google/retrieval-qa-eval's protocol): Recall@k and MRR.

Examples:
  # BM25 on every question of the SQuAD v1.1 train file (87,599 questions, 91,707 candidates):
  python eval/reqa.py --model=bm25 --squad=squad --out=/tmp/reqa_bm25
  # The packaged all-MiniLM-L6-v2 on 1,000 of the questions (a CPU budget):
  python eval/reqa.py --model=minilm --max_questions=1000 --out=/tmp/reqa_minilm
  # A training run (latest checkpoint, or --step=N), on the articles the 0.8 split holds out:
  python eval/reqa.py --model=/tmp/ict_run --train_fraction=0.8 --seed=0 --out=/tmp/reqa_ict

`--model` is a training workdir (config.json and checkpoints/: its query and passage towers are
restored from the checkpoint by the recipe), a HF directory, a hub id, `minilm`, or `bm25`.
`--squad` is a SQuAD v1.1 `.json` / `.json.gz` file, a directory holding `train-v1.1.json[.gz]`
(and `dev-v1.1.json[.gz]` for `--split=dev`), or a data set name (`squad`: found under
$RETRIEVAL_JAX_DATA, then ../shared/data). By default every question of the file is ranked
against all its candidates; `--train_fraction` evaluates only the articles that split holds out
(`retrieval_jax.data.reqa.split_by_article`). Writes metrics.json, run.trec and eval_info.json.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from retrieval_jax import host_malloc

FLAGS = flags.FLAGS
host_malloc.define_flag()
flags.DEFINE_string("model", "minilm", "Training workdir, HF model directory, hub id, `minilm` "
                    "(packaged) or `bm25`.")
flags.DEFINE_integer("step", None, "With a training workdir: the checkpoint step (default latest).")
flags.DEFINE_enum("pooling", "auto", ["auto", "cls", "mean", "pooler"],
                  "Pooling; `auto` uses what the checkpoint's sentence-transformers files declare.")
flags.DEFINE_enum("normalize", "auto", ["auto", "true", "false"],
                  "L2-normalise embeddings; `auto` follows the checkpoint.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_string("squad", "squad", "SQuAD v1.1 JSON file, directory, or data set name.")
flags.DEFINE_enum("split", "train", ["train", "dev"], "Which file of a directory.")
flags.DEFINE_float("train_fraction", None, "Evaluate only the articles a split with this train "
                   "fraction holds out (default: every question).")
flags.DEFINE_integer("seed", 0, "Seed of the article split and of --max_questions.")
flags.DEFINE_enum("candidates", "all", ["all", "test"], "Rank against every candidate of the "
                  "file (the protocol) or only the evaluated articles'.")
flags.DEFINE_integer("max_questions", None, "Evaluate a seeded subset of this many questions.")
flags.DEFINE_integer("max_length", 256, "Candidate (sentence + paragraph) token cap.")
flags.DEFINE_integer("query_max_length", 64, "Question token cap.")
flags.DEFINE_integer("batch_size", 128, "Encoding batch size (global).")
flags.DEFINE_integer("depth", 100, "Candidates retrieved per question (at least 100).")
flags.DEFINE_float("bm25_k1", 0.9, "BM25 k1.")
flags.DEFINE_float("bm25_b", 0.4, "BM25 b.")
flags.DEFINE_string("out", None, "Output directory for metrics.json and run.trec.")
flags.DEFINE_bool("progress", True, "Show progress bars.")

NAME = "reqa"


def config_from_flags():
  """A `zeroshot` config whose one `reqa` evaluator the flags describe."""
  from configs import common  # pylint: disable=g-import-not-at-top

  config = common.base_config()
  config.recipe = "zeroshot"
  config.model.update(name=FLAGS.model, pooling=FLAGS.pooling, normalize=FLAGS.normalize,
                      dtype=FLAGS.dtype)
  entry = common.reqa_eval(FLAGS.split)
  entry.data.update(path=FLAGS.squad, train_fraction=FLAGS.train_fraction, seed=FLAGS.seed,
                    candidates=FLAGS.candidates, max_questions=FLAGS.max_questions)
  entry.update(index="bm25" if FLAGS.model == "bm25" else "exact", depth=FLAGS.depth,
               max_length=FLAGS.max_length, query_max_length=FLAGS.query_max_length,
               batch_size=FLAGS.batch_size, progress=FLAGS.progress)
  entry.bm25.update(k1=FLAGS.bm25_k1, b=FLAGS.bm25_b)
  config.evals = {NAME: entry}
  return config



def run_from_flags() -> dict:
  """Evaluates as the flags say, writes --out, prints a table, returns the metrics."""
  # pylint: disable=g-import-not-at-top
  from etils import epath
  from retrieval_jax import evaluation, evaluators, recipes, run_config

  flag_config = config_from_flags()
  evaluator = evaluators.build(NAME, flag_config.evals[NAME])
  evaluator.eval_set  # pylint: disable=pointless-statement  # bad data fails before models load
  if FLAGS.model != "bm25" and run_config.is_training_workdir(FLAGS.model):
    models, step = recipes.eval_models(run_config.load_config(FLAGS.model), FLAGS.model,
                                       FLAGS.step)
    out = FLAGS.out or os.path.join(FLAGS.model, "eval", f"step_{step}", NAME)
    label = f"{FLAGS.model} step {step}"
  else:
    if FLAGS.step is not None:
      raise ValueError(f"--step needs a training workdir; {FLAGS.model} is not one "
                       "(no config.json and checkpoints/)")
    models, step = recipes.eval_models(flag_config, FLAGS.out)
    out = FLAGS.out
    label = FLAGS.model
  evaluators.check_models(evaluator, models, "eval/reqa.py")
  values = evaluator.run(models, None if out is None else epath.Path(out))
  counts = {key: values.pop(key) for key in ("questions", "candidates")}
  print(f"\nReQA {FLAGS.squad} / {FLAGS.split} / {label}: {counts['questions']} questions, "
        f"{counts['candidates']} candidates")
  print(evaluation.format_table(values))
  if out:
    print(f"wrote {os.path.join(out, 'metrics.json')} and run.trec")
  return dict(values, **counts, **({} if step is None else {"step": step}))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  host_malloc.ensure_or_exit(FLAGS.malloc, may_reexec=__name__ == "__main__")
  try:
    run_from_flags()
  except (ValueError, FileNotFoundError) as error:
    # Bad input (missing data or model, a bad fraction): one line and status 1, no traceback.
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
