r"""Evaluates sentence embeddings on STS-B: Spearman and Pearson × 100 of the pairs' cosines.

Examples:
  # The packaged all-MiniLM-L6-v2 before any training, [CLS] and mean pooling, on dev:
  python eval/sts.py --model=minilm --pooling=cls --split=dev --out=/tmp/sts_minilm_cls
  python eval/sts.py --model=minilm --pooling=mean --split=dev --out=/tmp/sts_minilm_mean
  # A training run (its best checkpoint when it kept one, else the latest; or --step=N),
  # with the pooling it was trained with:
  python eval/sts.py --model=/tmp/sgopt_run --split=dev
  # Another copy of STS-B that also holds sts-test.csv, read through its TFDS builder:
  python eval/sts.py --model=minilm --pooling=mean --data=tfds:/data/stsb --split=test

`--model` is a training workdir (config.json and checkpoints/: its `query` model is restored
from the checkpoint by the recipe), a HF directory, a hub id, or `minilm`. `--pooling` applies
to a HF directory, hub id or `minilm` (`auto`: what the checkpoint's sentence-transformers files
declare, CLS when there are none). A training workdir keeps the pooling it was trained with: a
different explicit `--pooling` is refused (evaluate the run's export, `W/export/encoder`, with
that pooling instead), since the restored model's head is the recipe's, not a HF checkpoint's.
L2 normalisation does not change a cosine, so it is left as the model has it.

`--data` is an STS-B directory holding `sts-<split>.csv` files, a data set name found under
$RETRIEVAL_JAX_DATA, then ../shared/data (default `stsb`), or `tfds:<directory or name>`.
Writes `metrics.json` (spearman, pearson, model, pooling, split, pairs, ...), `scores.tsv` (per
pair: gold score and cosine) and `eval_info.json` into --out (a workdir's default:
`W/eval/step_<N>/sts`).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from retrieval_jax import host_malloc

FLAGS = flags.FLAGS
host_malloc.define_flag()
flags.DEFINE_string("model", "minilm", "Training workdir, HF model directory, hub id or "
                    "`minilm` (packaged).")
flags.DEFINE_string("step", None, "With a training workdir: the checkpoint step or `best` "
                    "(default: the best checkpoint when the run kept one, else the latest).")
flags.DEFINE_enum("pooling", "auto", ["auto", "cls", "mean", "pooler"],
                  "Pooling; `auto` uses what the checkpoint's sentence-transformers files declare.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_string("data", None, "STS-B directory, data set name or tfds:<directory or name> "
                    "(default: `stsb`, found like every data set).")
flags.DEFINE_string("split", "dev", "train, dev or test (the sts-<split>.csv file).")
flags.DEFINE_string("tfds_dir", None, "Where --data=tfds:... is prepared.")
flags.DEFINE_integer("max_length", 128, "Token cap per sentence, special tokens included.")
flags.DEFINE_integer("batch_size", 128, "Encoding batch size (global).")
flags.DEFINE_string("out", None, "Output directory for metrics.json and scores.tsv.")
flags.DEFINE_bool("progress", True, "Show progress bars.")

NAME = "sts"
ROLE = "query"


def config_from_flags():
  """A `zeroshot` config whose model and one `sts` evaluator the flags describe."""
  from configs import common  # pylint: disable=g-import-not-at-top

  config = common.base_config()
  config.recipe = "zeroshot"
  config.model.update(name=FLAGS.model, pooling=FLAGS.pooling, dtype=FLAGS.dtype)
  entry = common.sts_eval(FLAGS.split)
  entry.update(data=FLAGS.data, tfds_dir=FLAGS.tfds_dir, role=ROLE, max_length=FLAGS.max_length,
               batch_size=FLAGS.batch_size, progress=FLAGS.progress)
  config.evals = {NAME: entry}
  return config



def check_flags() -> None:
  """Raises ValueError naming the flag when --split, --model or a length is unusable."""
  from retrieval_jax.data import stsb  # pylint: disable=g-import-not-at-top

  if FLAGS.split not in stsb.SPLITS:
    raise ValueError(f"--split={FLAGS.split!r} is not one of {', '.join(stsb.SPLITS)}")
  if FLAGS.model == "bm25":
    raise ValueError("--model=bm25 has no sentence vectors: STS needs an encoder")
  if FLAGS.step is not None and FLAGS.step != "best" and not FLAGS.step.isdigit():
    raise ValueError(f"--step={FLAGS.step!r} must be a step number or 'best'")
  for name in ("max_length", "batch_size"):
    if FLAGS[name].value < 1:
      raise ValueError(f"--{name}={FLAGS[name].value} is below 1")


def workdir_pooling_check(pooling: str) -> None:
  """Refuses an explicit --pooling other than the restored model's `pooling` (module docs)."""
  if FLAGS["pooling"].present and FLAGS.pooling not in ("auto", pooling):
    raise ValueError(f"--pooling={FLAGS.pooling} differs from the pooling {FLAGS.model} was "
                     f"trained with ({pooling}); evaluate its export "
                     f"({os.path.join(FLAGS.model, 'export', 'encoder')}) with --pooling="
                     f"{FLAGS.pooling}, or give no --pooling")


def run_from_flags() -> dict:
  """Evaluates as the flags say, writes --out, prints a table, returns the metrics."""
  # pylint: disable=g-import-not-at-top
  from etils import epath
  from retrieval_jax import evaluation, evaluators, recipes, run_config

  check_flags()
  flag_config = config_from_flags()
  evaluator = evaluators.build(NAME, flag_config.evals[NAME])
  pairs = evaluator.pairs  # bad data fails before models load
  if run_config.is_training_workdir(FLAGS.model):
    wanted = FLAGS.step if FLAGS.step in (None, "best") else int(FLAGS.step)
    models, step = recipes.eval_models(run_config.load_config(FLAGS.model), FLAGS.model, wanted)
    evaluators.check_models(evaluator, models, "eval/sts.py")
    workdir_pooling_check(models.get(ROLE).pooling.mode)
    out = FLAGS.out or os.path.join(FLAGS.model, "eval", f"step_{step}", NAME)
    label = f"{FLAGS.model} step {step}"
  else:
    if FLAGS.step is not None:
      raise ValueError(f"--step needs a training workdir; {FLAGS.model} is not one "
                       "(no config.json and checkpoints/)")
    models, step = recipes.eval_models(flag_config, FLAGS.out)
    evaluators.check_models(evaluator, models, "eval/sts.py")
    out = FLAGS.out
    label = FLAGS.model
  values = evaluator.run(models, None if out is None else epath.Path(out))
  pooling = models.get(ROLE).pooling.mode
  record = dict(values, model=FLAGS.model, pooling=pooling, split=FLAGS.split,
                pairs=len(pairs), data=pairs.source, max_length=FLAGS.max_length,
                **({} if step is None else {"step": step}))
  print(f"\nSTS-B {FLAGS.split} / {label} / {pooling} pooling: {len(pairs)} pairs")
  print(evaluation.format_table(values))
  if out:
    # The evaluator's metrics.json, with what was evaluated beside the numbers.
    path = epath.Path(out) / "metrics.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
    print(f"wrote {path} and scores.tsv")
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  host_malloc.ensure_or_exit(FLAGS.malloc, may_reexec=__name__ == "__main__")
  try:
    run_from_flags()
  except (ValueError, FileNotFoundError) as error:
    # Bad input (missing data or model, a bad split): one line and status 1, no traceback.
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
