r"""Evaluates a retriever on a BEIR data set: metrics.json and run.trec.

Examples:
  # The packaged all-MiniLM-L6-v2, zero-shot, on the SciFact dev split carved from train:
  python eval/retrieval.py --model=minilm --pooling=mean --max_length=256 \
      --data=scifact --split=dev --out=/tmp/minilm_scifact
  # BM25 (bm25s, English stemming and stopwords):
  python eval/retrieval.py --index=bm25 --data=scifact --split=dev --out=/tmp/bm25_scifact
  # ScaNN instead of exact search, reporting its top-10 overlap with exact search:
  python eval/retrieval.py --model=minilm --index=scann --scann_check_exact --out=/tmp/scann
  # A training run's checkpoint (the latest, or --step=N), e.g. after main.py --workdir=/tmp/dpr:
  python eval/retrieval.py --model=/tmp/dpr --data=scifact --split=dev

`--model` is a HF directory, a hub id, `minilm`, or a training workdir (a directory with
config.json and checkpoints/: its query and passage towers are restored from the checkpoint).
With `--index=maxsim` or `--index=bm25_maxsim` it is a ColBERT model: a ColBERT training
workdir, or a ColBERT directory (stanford or PyLate layout, e.g. `colbert-ir/colbertv2.0`):
  python eval/retrieval.py --model=runs/colbert_cpu --index=maxsim --token_depth=100
  python eval/retrieval.py --model=runs/colbert_cpu/export/colbert --index=bm25_maxsim
An exported TCT-ColBERT student (`tct_format.json` beside its weights) is read in its own
query and document formats (`encode.load_towers`):
  python eval/retrieval.py --model=runs/tct_cpu/export/encoder --data=scifact --split=dev
`--data` is a BEIR directory or a data set name found under $RETRIEVAL_JAX_DATA, then
../shared/data, then downloaded.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from retrieval_jax import host_malloc

FLAGS = flags.FLAGS
host_malloc.define_flag()
flags.DEFINE_string("model", "minilm", "HF model directory, hub id, `minilm` (packaged), or a "
                    "training workdir (config.json + checkpoints/).")
flags.DEFINE_integer("step", None, "With a training workdir: the checkpoint step (default latest).")
flags.DEFINE_enum("pooling", "auto", ["auto", "cls", "mean", "pooler"],
                  "Pooling; `auto` uses what the checkpoint's sentence-transformers files declare "
                  "(CLS when there are none).")
flags.DEFINE_enum("normalize", "auto", ["auto", "true", "false"],
                  "L2-normalise embeddings; `auto` follows the checkpoint.")
flags.DEFINE_integer("max_length", 256, "Document token cap (special tokens included); with "
                     "--max_passages > 1, the length of each passage.")
flags.DEFINE_integer("max_passages", 1, "Passages per document: 1 is FirstP (truncation), N > 1 "
                     "is MaxP (a document scores the best of its first N passages).")
flags.DEFINE_integer("query_max_length", None, "Query token cap (default: --max_length).")
flags.DEFINE_string("data", "scifact", "BEIR directory or data set name.")
flags.DEFINE_string("split", "dev", "Qrels split: test, train, dev (carved from train when "
                    "there is no dev.tsv) or train_minus_dev.")
flags.DEFINE_float("dev_fraction", 0.2, "Share of train queries carved out as dev.")
flags.DEFINE_enum("index", "exact", ["exact", "scann", "bm25", "maxsim", "bm25_maxsim"],
                  "Search method: dense exact / ScaNN, BM25, or for a ColBERT model `maxsim` "
                  "(end to end: token vectors in ScaNN, candidates re-ranked with MaxSim) and "
                  "`bm25_maxsim` (BM25's top --rerank_depth re-ranked with MaxSim).")
flags.DEFINE_integer("rerank_depth", 100, "--index=bm25_maxsim: BM25 candidates re-ranked.")
flags.DEFINE_integer("token_depth", 100, "--index=maxsim: nearest tokens fetched per query "
                     "vector (ColBERT's k').")
flags.DEFINE_integer("depth", 100, "Documents retrieved per query (run depth).")
flags.DEFINE_list("metrics", ["ndcg@10", "mrr@10", "recall@10", "recall@100", "map"],
                  "Metrics (pytrec_eval): ndcg@k, mrr@k, recall@k, precision@k, map, map@k.")
flags.DEFINE_integer("batch_size", 128, "Encoding batch size (global).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                  "Computation dtype (bfloat16 on accelerators).")
flags.DEFINE_string("out", None, "Output directory for metrics.json and run.trec.")
flags.DEFINE_bool("save_embeddings", False, "Also write corpus/query embeddings as .npy.")
flags.DEFINE_enum("embeddings_dtype", "float32", ["float32", "float16"], "Saved embedding dtype.")
flags.DEFINE_integer("scann_num_leaves", None, "ScaNN tree leaves (default ~sqrt(n)).")
flags.DEFINE_integer("scann_leaves_to_search", None, "ScaNN leaves searched per query.")
flags.DEFINE_integer("scann_reorder_k", None, "ScaNN candidates rescored exactly (default 100; "
                     "0 for --index=maxsim, whose token candidates are re-scored by MaxSim).")
flags.DEFINE_float("scann_aq_threshold", 0.2, "ScaNN anisotropic quantization threshold.")
flags.DEFINE_bool("scann_check_exact", False,
                  "With --index=scann, also search exactly and report scann_overlap@10.")
flags.DEFINE_float("bm25_k1", 0.9, "BM25 k1.")
flags.DEFINE_float("bm25_b", 0.4, "BM25 b.")
flags.DEFINE_string("tfds_dir", None, "Where TFDS keeps prepared data.")
flags.DEFINE_bool("progress", True, "Show progress bars.")


MAXSIM_INDEXES = ("maxsim", "bm25_maxsim")


def config_from_flags():
  """A `zeroshot` config whose one evaluator (named after --split) the flags describe."""
  from configs import common  # pylint: disable=g-import-not-at-top

  config = common.base_config()
  config.recipe = "zeroshot"
  config.model.update(name=FLAGS.model, pooling=FLAGS.pooling, normalize=FLAGS.normalize,
                      dtype=FLAGS.dtype)
  config.data.update(name=FLAGS.data, dev_fraction=FLAGS.dev_fraction, tfds_dir=FLAGS.tfds_dir)
  if FLAGS.index in MAXSIM_INDEXES:
    entry = common.maxsim_eval(FLAGS.split)
    entry.update(index=FLAGS.index, depth=FLAGS.depth, rerank_depth=FLAGS.rerank_depth,
                 token_depth=FLAGS.token_depth, metrics=tuple(FLAGS.metrics),
                 batch_size=FLAGS.batch_size, progress=FLAGS.progress,
                 # The model's document length unless --max_length is given.
                 doc_max_length=FLAGS.max_length if FLAGS["max_length"].present else None)
  else:
    entry = common.retrieval_eval(FLAGS.split)
    entry.update(
        index=FLAGS.index, depth=FLAGS.depth, metrics=tuple(FLAGS.metrics),
        max_length=FLAGS.max_length, query_max_length=FLAGS.query_max_length,
        max_passages=FLAGS.max_passages, batch_size=FLAGS.batch_size,
        save_embeddings=FLAGS.save_embeddings, embeddings_dtype=FLAGS.embeddings_dtype,
        check_exact=FLAGS.scann_check_exact, progress=FLAGS.progress)
  entry.scann.update(num_leaves=FLAGS.scann_num_leaves,
                     num_leaves_to_search=FLAGS.scann_leaves_to_search,
                     anisotropic_quantization_threshold=FLAGS.scann_aq_threshold)
  if FLAGS.scann_reorder_k is not None:
    entry.scann.reorder_k = FLAGS.scann_reorder_k
  entry.bm25.update(k1=FLAGS.bm25_k1, b=FLAGS.bm25_b)
  entry.data.update(name=FLAGS.data, dev_fraction=FLAGS.dev_fraction, tfds_dir=FLAGS.tfds_dir)
  config.evals = {FLAGS.split: entry}
  return config



def run_from_flags() -> dict:
  """Evaluates as the flags say, writes --out, prints a table, returns the metrics.

  The one evaluator of `config_from_flags` runs through the evaluator registry on the models
  of a training workdir's checkpoint, or of the pretrained `--model`.
  """
  # pylint: disable=g-import-not-at-top
  from etils import epath
  from retrieval_jax import evaluation, evaluators, recipes, run_config

  flag_config = config_from_flags()
  (entry,) = flag_config.evals.values()
  evaluator = evaluators.build(FLAGS.split, entry, flag_config.data)
  if FLAGS.index != "bm25" and run_config.is_training_workdir(FLAGS.model):
    models, step = recipes.eval_models(run_config.load_config(FLAGS.model), FLAGS.model,
                                       FLAGS.step)
    out = FLAGS.out or os.path.join(FLAGS.model, "eval", f"step_{step}", FLAGS.split)
    label = f"{FLAGS.model} step {step}"
  else:
    if FLAGS.step is not None:
      raise app.UsageError(f"--step needs a training workdir; {FLAGS.model} is not one "
                           "(no config.json and checkpoints/)")
    models, step = recipes.eval_models(flag_config, FLAGS.out)
    out = FLAGS.out
    label = "bm25" if FLAGS.index == "bm25" else FLAGS.model
  evaluators.check_models(evaluator, models, "eval/retrieval.py")
  values = evaluator.run(models, None if out is None else epath.Path(out))
  print(f"\n{FLAGS.data} / {FLAGS.split} / {FLAGS.index} / {label}")
  print(evaluation.format_table(values))
  if out:
    print(f"wrote {os.path.join(out, 'metrics.json')} and run.trec")
  return dict(values, **({} if step is None else {"step": step}))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  host_malloc.ensure_or_exit(FLAGS.malloc, may_reexec=__name__ == "__main__")
  try:
    run_from_flags()
  except (ValueError, FileNotFoundError) as error:
    # Bad input (a missing model or data, a model without the role an index needs): one
    # line and status 1, no traceback.
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
