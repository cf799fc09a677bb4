"""Document-encoding throughput: `retrieval_jax.encode.encode_texts` against sentence-transformers.

Both sides embed the first N SciFact documents (`title + " " + text`) with the same weights, the same
token cap and the same batch size, after one untimed warm-up each (jit compilation for us, lazy
initialisation for PyTorch; reported as `*_warmup_s`, and our compile time exactly, from JAX's own
compile events). Then `--repeats` rounds alternate the two in ABBA order (ours, reference,
reference, ours, ...) so that load from other processes on a shared machine hits both alike.
Each timed call is the whole public path: tokenisation, batching, forward, pooling and copying
back, as a user calling either library sees it.

Results: `ours_docs_per_s` and `reference_docs_per_s` are N / median seconds and `ratio` is ours
over reference. On a shared machine also read `ratio_paired_median` (the median over rounds of the
two back-to-back timings' ratio, which cancels slow load drift) and `ratio_best` (fastest round of
each: noise only ever adds time); `loadavg_start`/`loadavg_end` show how busy the machine was.

Fairness: sentence-transformers also sorts its inputs by length (by characters, longest first) and
pads each batch to its longest member; we sort by tokens and pad to a multiple of
`--pad_to_multiple_of`. Both padding fractions are reported. PyTorch keeps its default thread count.

Usage:
  python eval/bench_encode.py --limit=512 --out=/tmp/bench_encode.json
  python -m eval.bench_encode --limit=512 --batch_size=32

XLA:CPU options go in the environment, because XLA reads them once, when JAX starts:
  XLA_FLAGS="--xla_cpu_prefer_vector_width=512" python eval/bench_encode.py
except those the encoding forward compiles with (`encode.CPU_FORWARD_COMPILER_OPTIONS`: YNNPACK
fusions off), which take precedence over XLA_FLAGS.
The benchmark uses whatever devices JAX has; it never forces fake host devices. The process
runs on the C heap `--malloc` picks, as `main.py` does (both sides share it; the JSON's
`environment.malloc` says which).
"""

from __future__ import annotations

import os
import pathlib
import statistics
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import numpy as np

from eval import bench_harness
from retrieval_jax import host_malloc

_LIMIT = flags.DEFINE_integer("limit", 512, "Encode the first N SciFact documents (0: all of them).")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON to this file.")
_DATA = flags.DEFINE_string(
    "data", None, "BEIR SciFact directory (default: `paths.find_dataset('scifact')`, i.e. "
    "$RETRIEVAL_JAX_DATA/scifact or ../shared/data/scifact).")
_MODEL = flags.DEFINE_string(
    "model", "minilm", "HF model directory, hub id or `minilm` (the packaged all-MiniLM-L6-v2).")
# 32 rows by default: both sides are at their fastest up to 32; beyond, the [rows, 12, 256, 256]
# attention scores leave the caches and both slow down, PyTorch more than us, so a larger batch
# would flatter our ratio. 32 also compiles fewer shapes than 16 and is sentence-transformers'
# own default (measurements in WORKSPACE, "Batch size of bench_encode").
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Rows per forward, the same for both sides.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 256, "Token cap, special tokens included.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds per side (after one warm-up each).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Our computation dtype (the PyTorch reference stays float32).")
_PAD_TO = flags.DEFINE_integer("pad_to_multiple_of", 16,
                               "Our length-bucket size (encode_texts' default is 16).")
_REFERENCE = flags.DEFINE_bool("reference", True,
                               "Also time sentence-transformers (off: only our throughput).")
_MALLOC = host_malloc.define_flag()


def _median_rate(n_docs: int, seconds: Sequence[float]) -> float:
  return n_docs / statistics.median(seconds)


def padding_stats(token_ids: Sequence[Sequence[int]], batch_size: int, max_length: int,
                  pad_to_multiple_of: int) -> dict[str, Any]:
  """Padding of our length-bucketed batches (filler rows count as padding: they are computed)."""
  from retrieval_jax.data import tokenize as tok  # pylint: disable=g-import-not-at-top

  real = computed = 0
  widths = []
  for batch in tok.length_bucketed_batches(token_ids, batch_size, 0, max_length,
                                           pad_to_multiple_of=pad_to_multiple_of):
    real += int(batch.attention_mask.sum())
    computed += batch.attention_mask.size
    widths.append(batch.input_ids.shape[1])
  return {"ours_padding_fraction": 1.0 - real / computed if computed else 0.0,
          "ours_num_batches": len(widths), "ours_batch_widths": sorted(set(widths), reverse=True)}


def reference_padding_fraction(texts: Sequence[str], lengths: np.ndarray, batch_size: int) -> float:
  """Padding of sentence-transformers' batches: sorted by character length, padded to the longest."""
  order = np.argsort([-len(text) for text in texts])  # Its own sort key (`_input_length`).
  real = computed = 0
  for start in range(0, len(order), batch_size):
    rows = lengths[order[start:start + batch_size]]
    real += int(rows.sum())
    computed += int(rows.max()) * len(rows)
  return 1.0 - real / computed if computed else 0.0


def load_documents(data: str | None, limit: int) -> tuple[list[str], pathlib.Path]:
  """The first `limit` SciFact documents as encoders see them, and the directory they came from."""
  from retrieval_jax.data import beir, paths  # pylint: disable=g-import-not-at-top

  root = paths.find_dataset(data or "scifact")
  if root is None:
    if data:
      raise app.UsageError(f"--data={data}: not a directory, nor a data set under "
                           f"{', '.join(map(str, paths.search_roots()))}")
    where = ", ".join(str(p / "scifact") for p in paths.search_roots())
    raise app.UsageError(f"SciFact not found (looked in {where}); pass --data=/path/to/scifact or "
                         f"set ${paths.DATA_ENV} to the directory holding `scifact/`")
  # The corpus is the same for every split; take any the directory has (local copies may lack test).
  split = beir.available_splits(beir.locate_files(root))[0]
  texts = beir.load_beir(root, split=split, use_tfds=False).doc_strings()
  return (texts[:limit] if limit > 0 else texts), root


def _rates(prefix: str, n_docs: int, seconds: Sequence[float]) -> dict[str, float]:
  return {f"{prefix}_docs_per_s": _median_rate(n_docs, seconds),
          f"{prefix}_docs_per_s_best": n_docs / min(seconds)}


def run(*, limit: int, data: str | None, model: str, batch_size: int, max_length: int,
        repeats: int, dtype: str, pad_to_multiple_of: int = 16,
        reference: bool = True) -> dict[str, Any]:
  """Runs the benchmark and returns the results dictionary (see the module docstring)."""
  if repeats < 1 or batch_size < 1 or max_length < 2:
    raise app.UsageError("--repeats, --batch_size must be >= 1 and --max_length >= 2")
  import jax  # pylint: disable=g-import-not-at-top

  from eval import compile_clock  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from retrieval_jax import encode  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import tokenize as tok  # pylint: disable=g-import-not-at-top

  load_start = os.getloadavg()[0]
  texts, data_dir = load_documents(data, limit)
  n_docs = len(texts)
  encoder = encode.load_encoder(model, dtype=jnp.dtype(dtype))
  mesh = encode.data_mesh()
  devices = int(mesh.devices.size)
  rows = -(-batch_size // devices) * devices  # What encode_texts actually runs.

  start = time.perf_counter()
  token_ids = tok.tokenize(encoder.tokenizer, texts, max_length)
  tokenize_s = time.perf_counter() - start
  lengths = np.array([len(ids) for ids in token_ids])

  def ours():
    return encode.encode_texts(encoder, texts, max_length=max_length, batch_size=batch_size,
                               mesh=mesh, pad_to_multiple_of=pad_to_multiple_of, progress=False)

  results: dict[str, Any] = {}
  with compile_clock.CompileClock() as warmup_clock:
    ours_warmup, ours_emb = bench_harness.timed(ours)
  sides: dict[str, Callable[[], Any]] = {"ours": ours}
  if reference:
    import sentence_transformers  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top

    st_model = sentence_transformers.SentenceTransformer(str(encoder.model_dir), device="cpu")
    st_model.max_seq_length = max_length

    def theirs():
      return st_model.encode(texts, batch_size=rows, show_progress_bar=False,
                             convert_to_numpy=True, normalize_embeddings=encoder.pooling.normalize)

    ref_warmup, ref_emb = bench_harness.timed(theirs)
    sides["reference"] = theirs
    ref_emb = np.asarray(ref_emb, dtype=np.float32)
    ours_emb = ours_emb.astype(np.float32)
    cosine = np.sum(ours_emb * ref_emb, axis=1) / np.maximum(
        np.linalg.norm(ours_emb, axis=1) * np.linalg.norm(ref_emb, axis=1), 1e-12)
    results.update(
        max_abs_diff=float(np.abs(ours_emb - ref_emb).max()), min_cosine=float(cosine.min()),
        reference_warmup_s=ref_warmup,
        reference_padding_fraction=reference_padding_fraction(texts, lengths, rows),
        torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        sentence_transformers_version=sentence_transformers.__version__)

  with compile_clock.CompileClock() as timed_clock:
    seconds, _ = bench_harness.alternate(sides, repeats)

  out: dict[str, Any] = {"ours_docs_per_s": _median_rate(n_docs, seconds["ours"])}
  if reference:
    out.update(max_abs_diff=results.pop("max_abs_diff"),
               **bench_harness.speed_ratio(seconds["ours"], seconds["reference"]),
               **_rates("reference", n_docs, seconds["reference"]))
  else:
    out.update(reference_docs_per_s=None, ratio=None, max_abs_diff=None)
  out.update(
      n_docs=n_docs, batch_size=batch_size, batch_rows=rows, max_length=max_length,
      pad_to_multiple_of=pad_to_multiple_of, dtype=dtype, repeats=repeats,
      ours_seconds=seconds["ours"], reference_seconds=seconds.get("reference"),
      **_rates("ours", n_docs, seconds["ours"]),
      ours_warmup_s=ours_warmup, ours_compile_s=warmup_clock.seconds,
      ours_compiles=warmup_clock.compiles,
      # Compilation during the timed calls, per call (0 while the cached forward is reused).
      ours_compile_s_per_call=timed_clock.seconds / repeats,
      ours_recompiles_per_call=timed_clock.compiles / repeats,
      tokenize_s=tokenize_s, mean_tokens_per_doc=float(lengths.mean()),
      docs_at_max_length=float(np.mean(lengths >= max_length)),
      **padding_stats(token_ids, rows, max_length, pad_to_multiple_of),
      devices=devices, platform=jax.default_backend(), jax_version=jax.__version__,
      cpu=bench_harness.cpu_model(), environment=bench_harness.environment(),
      loadavg_start=load_start, loadavg_end=os.getloadavg()[0],
      xla_flags=os.environ.get("XLA_FLAGS", ""), model_dir=str(encoder.model_dir),
      data_dir=str(data_dir), **results)
  return out


def format_table(result: dict[str, Any]) -> str:
  """A human-readable summary of `run`'s result."""
  def row(name, rate, best, warmup, padding):
    return f"{name:22}{rate:>9.1f}{best:>9.1f}{warmup:>11.2f}{100 * padding:>8.1f}%"

  lines = [
      bench_harness.cpu_line(result["environment"]["cpu"]),
      f"{result['n_docs']} docs, batch {result['batch_rows']}, max_length {result['max_length']}, "
      f"{result['devices']} {result['platform']} device(s), {result['dtype']}; "
      f"mean {result['mean_tokens_per_doc']:.0f} tokens/doc, "
      f"{100 * result['docs_at_max_length']:.0f}% at the cap; load {result['loadavg_start']:.1f}"
      f"->{result['loadavg_end']:.1f}",
      f"{'':22}{'docs/s':>9}{'best':>9}{'warm-up s':>11}{'padding':>9}",
      row("ours (JAX)", result["ours_docs_per_s"], result["ours_docs_per_s_best"],
          result["ours_warmup_s"], result["ours_padding_fraction"]),
  ]
  if result["reference_docs_per_s"] is not None:
    lines.append(row("sentence-transformers", result["reference_docs_per_s"],
                     result["reference_docs_per_s_best"], result["reference_warmup_s"],
                     result["reference_padding_fraction"]))
    lines.append(f"ratio ours/reference {result['ratio']:.3f} (paired median "
                 f"{result['ratio_paired_median']:.3f}, best {result['ratio_best']:.3f}); "
                 f"max |diff| {result['max_abs_diff']:.2e}; torch threads {result['torch_threads']}")
  lines.append(f"our compile {result['ours_compile_s']:.1f} s for {result['ours_compiles']} "
               f"shape(s) in the warm-up, {result['ours_compile_s_per_call']:.2f} s per later call")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  host_malloc.ensure_or_exit(_MALLOC.value, may_reexec=__name__ == "__main__")
  result = run(limit=_LIMIT.value, data=_DATA.value, model=_MODEL.value,
               batch_size=_BATCH_SIZE.value, max_length=_MAX_LENGTH.value,
               repeats=_REPEATS.value, dtype=_DTYPE.value, pad_to_multiple_of=_PAD_TO.value,
               reference=_REFERENCE.value)
  print(format_table(result))
  bench_harness.write_json(result, _OUT.value)


if __name__ == "__main__":
  app.run(main)
