"""Nearest-neighbour indexes on real embeddings: ScaNN against faiss, hnswlib, USearch and exact.

Data (`--data`, any of `squad`, `scifact`, `synthetic`): MiniLM embeddings (`--model`, the
packaged all-MiniLM-L6-v2 by default: unit norm, 384-d) of
  - `squad`: the ReQA SQuAD v1.1 train candidates (`retrieval_jax.data.reqa`: 91,707 sentences,
    deduplicated on (sentence, paragraph); `--squad_text=sentence` embeds the sentence alone,
    `candidate` the sentence + paragraph a ReQA dual encoder reads), queried with a seeded sample
    of `--max_queries` distinct SQuAD questions (the sample `eval/reqa.py --max_questions` takes);
  - `scifact`: the BEIR SciFact corpus (title + text), queried with every query of the local
    `queries.jsonl` (at most `--max_queries`);
  - `synthetic`: clustered random unit vectors (tests and quick checks; no model).
Embeddings are cached as .npy under `--cache_dir`, keyed by a hash of the texts, the model and
the token cap, so reruns skip encoding. `--limit_docs` keeps the first N documents.

Ground truth: the exact top-`--k` by inner product, NumPy float32 in query blocks. recall@k of a
result list is the fraction of the k slots holding a distinct row whose true inner product is at
least the exact k-th score minus 1e-5 (ann-benchmarks' rule: a row tied with the k-th counts,
which matters for repeated sentences), averaged over queries.

Systems (`--systems`); the three graph indexes share M = `--hnsw_m` and the construction beam
`--hnsw_ef_construction`:
  - exact: NumPy brute force (matmul + argpartition in blocks of 1,024 queries); BLAS sets its
    own threads when NumPy loads, so it is timed in the multi-threaded mode only;
  - scann: `retrieval_jax.index.ScannIndex` with its defaults (tree of sqrt(n) leaves, SOAR,
    anisotropic hashing, float32 reordering), swept over leaves searched for each reorder_k of
    `--scann_reorder_k`;
  - faiss_hnsw: `IndexHNSWFlat` (inner product), swept over efSearch;
  - faiss_ivfpq: `IVF{4 sqrt n},PQ{m}x{nbits}np` (inner product), swept over nprobe; PQ codes alone
    rarely reach recall 0.95, so the same build also has an exact float32 re-ranking stage
    (`IndexRefineFlat`, faiss's `RFlat`) searched with each k_factor of `--ivfpq_k_factors`
    (k_factor 0: PQ alone); the float copy is counted only in the re-ranking points' memory;
  - hnswlib: space 'ip', swept over ef;
  - usearch: `usearch.index.Index`, metric 'ip', float32 storage, swept over expansion_search.
A system whose library is not installed is skipped with the reason in the JSON (faiss-cpu,
hnswlib and usearch are the `bench_index` extra, never dependencies of retrieval_jax).

Timing: every setting searches all queries in one batch call per library, in two thread modes,
`single` (1 thread: faiss `omp_set_num_threads(1)`, hnswlib / usearch `threads=1`, ScaNN's
`search_batched` on the calling thread) and `multi` (`--threads`, default every usable core;
ScaNN's `search_batched_parallel` on its own pool), alternated in ABBA order over `--rounds`
rounds; queries/s = queries / median seconds (`qps_best` from the fastest round). A sweep walks
each knob from cheap to costly in steps of 2**(1/`--steps_per_doubling`) and stops once recall
reaches `--stop_recall` or stops improving (two steps each gaining under 0.004 per doubling). For
each target recall (`--targets`) and mode the chosen point is the fastest setting whose recall@k
is at least the target; null when none reaches it.
`scann_qps_ratio_at_recall_0.95` is ScaNN's chosen queries/s over the best other ANN library's
(exact excluded), multi-threaded; per data set, with `_single` variants, and at the top level for
SQuAD (else the first data set run).

Builds use every thread of `--threads` (ScaNN: `set_n_training_threads`; it is also built once
with one training thread, `build_s_1_thread`, to show what the threads buy). Memory:
`index_bytes` is the serialized index (faiss `serialize_index`, the hnswlib and USearch saved
files, ScaNN's `save()` directory; exact: the float32 matrix), about what each holds in RAM;
`rss_growth_bytes` / `rss_peak_growth_bytes` are this process's resident memory after / at most
during the build (sampled every 50 ms) minus before it, free heap pages handed back to the OS
before each reading (`malloc_trim`): what the index keeps resident, and its builder's peak.

On a shared machine read `load` (1/5/15-minute load averages at the start and end of each data
set, and before each build) and `busy_processes`: the ratios of libraries timed back to back stay
meaningful longer than their absolute queries/s. When other processes hold cores, the
multi-threaded mode measures how each library copes with a starved thread (a split of the queries
into equal shares waits for the slowest; faiss's OpenMP fork and join costs most on small
batches), and `build_cpu_s` close to `build_s` says a build got about one core: read the
single-threaded columns there.

Usage:
  python eval/bench_index.py --out=/tmp/bench_index.json
  python eval/bench_index.py --data=scifact --systems=exact,scann,hnswlib --out=/tmp/b.json
  python eval/bench_index.py --data=squad --limit_docs=20000 --max_queries=1000 --rounds=1
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import hashlib
import importlib
import math
import os
import pathlib
import shutil
import statistics
import tempfile
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags
import numpy as np

from eval import bench_harness
from retrieval_jax import host_malloc

FLAGS = flags.FLAGS
DATASETS = ("squad", "scifact", "synthetic")
SYSTEM_NAMES = ("exact", "scann", "faiss_hnsw", "faiss_ivfpq", "hnswlib", "usearch")
# The approximate libraries ScaNN is compared with (exact search is the ceiling, not a rival).
ANN_OTHERS = ("faiss_hnsw", "faiss_ivfpq", "hnswlib", "usearch")
SQUAD_TEXTS = ("sentence", "candidate")
MODES = ("single", "multi")
# ann-benchmarks' tolerance: a returned row within this of the exact k-th score counts as found.
TIE_TOLERANCE = 1e-5
# A sweep stops when PLATEAU_STEPS consecutive steps each gain less recall than
# PLATEAU_GAIN_PER_DOUBLING / steps per doubling (the knob cannot buy more recall: PQ codes
# without re-ranking, a small reorder_k).
PLATEAU_STEPS = 2
PLATEAU_GAIN_PER_DOUBLING = 0.004
# Queries per block of the NumPy brute force: a [1024, n] float32 score block (377 MB at 92k).
EXACT_BLOCK = 1024
INSTALL_HINT = 'pip install "retrieval_jax[bench_index]"'


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags on `flag_values` (not at import: other eval CLIs define `--out` too)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("out", None, "Write the results as JSON to this file.", **fv)
  flags.DEFINE_list("data", ["squad", "scifact"], f"Data sets, any of {', '.join(DATASETS)}.",
                    **fv)
  flags.DEFINE_list("systems", list(SYSTEM_NAMES),
                    f"Systems, any of {', '.join(SYSTEM_NAMES)}.", **fv)
  flags.DEFINE_string("model", "minilm", "Encoder: HF directory, hub id or `minilm`.", **fv)
  flags.DEFINE_string("cache_dir", str(pathlib.Path.home() / ".cache" / "retrieval_jax" /
                                       "bench_index"),
                      "Embedding cache (.npy); empty: no cache.", **fv)
  flags.DEFINE_integer("limit_docs", 0, "Keep the first N documents (0: all).", **fv)
  flags.DEFINE_integer("max_queries", 10_000, "At most this many queries (a seeded sample).",
                       **fv)
  flags.DEFINE_integer("seed", 0, "Seed of the query sample and of the synthetic data.", **fv)
  flags.DEFINE_enum("squad_text", "sentence", list(SQUAD_TEXTS), "What a SQuAD candidate's "
                    "embedding reads: the sentence, or sentence + paragraph.", **fv)
  flags.DEFINE_integer("max_length", 256, "Document token cap.", **fv)
  flags.DEFINE_integer("query_max_length", 64, "Query token cap.", **fv)
  flags.DEFINE_integer("batch_size", 32, "Encoding batch size.", **fv)
  flags.DEFINE_integer("k", 10, "Neighbours per query (recall@k).", **fv)
  flags.DEFINE_list("targets", ["0.9", "0.95"], "Target recalls.", **fv)
  flags.DEFINE_float("stop_recall", 0.98, "A sweep stops at this recall.", **fv)
  flags.DEFINE_integer("steps_per_doubling", 4, "Knob grid density: values grow by "
                       "2**(1/N) per step (integers, so small values step by 1).", **fv)
  flags.DEFINE_integer("rounds", 3, "Timed rounds per setting and thread mode.", **fv)
  flags.DEFINE_integer("threads", 0, "Threads of the multi-threaded mode and of the builds "
                       "(0: every core this process may use).", **fv)
  flags.DEFINE_integer("hnsw_m", 32, "Graph degree M (faiss HNSW, hnswlib, USearch "
                       "connectivity).", **fv)
  flags.DEFINE_integer("hnsw_ef_construction", 200, "Construction beam (efConstruction, "
                       "ef_construction, expansion_add).", **fv)
  flags.DEFINE_integer("ivf_lists", 0, "IVF lists (0: round(4 sqrt(n))).", **fv)
  flags.DEFINE_integer("ivfpq_m", 48, "PQ sub-quantizers (the largest divisor of the "
                       "dimension not above it).", **fv)
  flags.DEFINE_integer("ivfpq_nbits", 8, "Bits per PQ code.", **fv)
  flags.DEFINE_list("ivfpq_k_factors", ["0", "4", "16"], "IVF-PQ re-ranking k_factors "
                    "(0: PQ codes alone).", **fv)
  flags.DEFINE_list("scann_reorder_k", ["20", "50", "100", "200"], "ScaNN reorder_k values.",
                    **fv)
  flags.DEFINE_integer("synthetic_docs", 5000, "Documents of --data=synthetic.", **fv)
  flags.DEFINE_integer("synthetic_queries", 500, "Queries of --data=synthetic.", **fv)
  flags.DEFINE_integer("synthetic_dim", 64, "Dimension of --data=synthetic.", **fv)
  host_malloc.define_flag(flag_values)


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything a run depends on (the flags, checked)."""
  data: tuple[str, ...] = ("squad", "scifact")
  systems: tuple[str, ...] = SYSTEM_NAMES
  model: str = "minilm"
  cache_dir: str = ""
  limit_docs: int = 0
  max_queries: int = 10_000
  seed: int = 0
  squad_text: str = "sentence"
  max_length: int = 256
  query_max_length: int = 64
  batch_size: int = 32
  k: int = 10
  targets: tuple[float, ...] = (0.9, 0.95)
  stop_recall: float = 0.98
  steps_per_doubling: int = 4
  rounds: int = 3
  threads: int = 0
  hnsw_m: int = 32
  hnsw_ef_construction: int = 200
  ivf_lists: int = 0
  ivfpq_m: int = 48
  ivfpq_nbits: int = 8
  ivfpq_k_factors: tuple[int, ...] = (0, 4, 16)
  scann_reorder_k: tuple[int, ...] = (20, 50, 100, 200)
  synthetic_docs: int = 5000
  synthetic_queries: int = 500
  synthetic_dim: int = 64

  @property
  def multi_threads(self) -> int:
    return self.threads or bench_harness.usable_cpus()


def _numbers(flag: str, values: Sequence[str], kind: Callable[[str], Any]) -> tuple[Any, ...]:
  try:
    return tuple(kind(v.strip()) for v in values if v.strip())
  except ValueError:
    raise app.UsageError(f"--{flag}={','.join(values)}: not a list of {kind.__name__}s") from None


def options_from_flags(fv: flags.FlagValues = FLAGS) -> Options:
  """The flags as checked `Options` (a bad value is a one-line `app.UsageError`)."""
  options = Options(
      data=tuple(d.strip() for d in fv.data if d.strip()),
      systems=tuple(s.strip() for s in fv.systems if s.strip()), model=fv.model,
      cache_dir=fv.cache_dir, limit_docs=fv.limit_docs, max_queries=fv.max_queries,
      seed=fv.seed, squad_text=fv.squad_text, max_length=fv.max_length,
      query_max_length=fv.query_max_length, batch_size=fv.batch_size, k=fv.k,
      targets=_numbers("targets", fv.targets, float), stop_recall=fv.stop_recall,
      steps_per_doubling=fv.steps_per_doubling, rounds=fv.rounds, threads=fv.threads,
      hnsw_m=fv.hnsw_m, hnsw_ef_construction=fv.hnsw_ef_construction, ivf_lists=fv.ivf_lists,
      ivfpq_m=fv.ivfpq_m, ivfpq_nbits=fv.ivfpq_nbits,
      ivfpq_k_factors=_numbers("ivfpq_k_factors", fv.ivfpq_k_factors, int),
      scann_reorder_k=_numbers("scann_reorder_k", fv.scann_reorder_k, int),
      synthetic_docs=fv.synthetic_docs, synthetic_queries=fv.synthetic_queries,
      synthetic_dim=fv.synthetic_dim)
  check_options(options)
  return options


def check_options(o: Options) -> None:
  """Raises a one-line `app.UsageError` naming the first bad flag."""
  def bad(flag, why):
    raise app.UsageError(f"--{flag}: {why}")

  if not o.data or set(o.data) - set(DATASETS):
    bad("data", f"{','.join(o.data) or 'empty'}: each must be one of {', '.join(DATASETS)}")
  if not o.systems or set(o.systems) - set(SYSTEM_NAMES):
    bad("systems", f"{','.join(o.systems) or 'empty'}: each must be one of "
        f"{', '.join(SYSTEM_NAMES)}")
  if not o.targets or not all(0 < t <= 1 for t in o.targets):
    bad("targets", "recalls in (0, 1]")
  if not 0 < o.stop_recall <= 1:
    bad("stop_recall", f"{o.stop_recall} is not in (0, 1]")
  for flag in ("k", "rounds", "steps_per_doubling", "max_queries", "max_length",
               "query_max_length", "batch_size", "hnsw_m", "hnsw_ef_construction", "ivfpq_m",
               "ivfpq_nbits", "synthetic_docs", "synthetic_queries", "synthetic_dim"):
    if getattr(o, flag) < 1:
      bad(flag, f"{getattr(o, flag)} must be at least 1")
  for flag in ("limit_docs", "threads", "ivf_lists"):
    if getattr(o, flag) < 0:
      bad(flag, f"{getattr(o, flag)} must be at least 0 (0: automatic)")
  if not o.scann_reorder_k or min(o.scann_reorder_k) < 1:
    bad("scann_reorder_k", "values must be at least 1")
  if not o.ivfpq_k_factors or min(o.ivfpq_k_factors) < 0:
    bad("ivfpq_k_factors", "values must be at least 0")


# ----------------------------------------------------------------------------- data


def synthetic_embeddings(num_docs: int, num_queries: int, dim: int, seed: int
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Unit vectors around sqrt(n) random centres; each query a noisy copy of a random document.

  Neighbourhoods that cross cluster borders make the approximate indexes work for their recall,
  as real sentence embeddings do.
  """
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((max(1, round(math.sqrt(num_docs))), dim))
  docs = centres[rng.integers(0, len(centres), num_docs)] + rng.standard_normal((num_docs, dim))
  docs /= np.linalg.norm(docs, axis=1, keepdims=True)
  queries = docs[rng.integers(0, num_docs, num_queries)]
  queries = queries + 0.5 * rng.standard_normal((num_queries, dim)) / math.sqrt(dim)
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  return docs.astype(np.float32), queries.astype(np.float32)


def _sample(texts: Sequence[str], max_items: int, seed: int) -> list[str]:
  if len(texts) <= max_items:
    return list(texts)
  keep = np.random.default_rng(seed).choice(len(texts), max_items, replace=False)
  return [texts[i] for i in sorted(keep)]


def load_texts(name: str, o: Options) -> tuple[list[str], list[str], dict[str, Any]]:
  """(document texts, query texts, where they came from) of `squad` or `scifact`."""
  from retrieval_jax.data import beir, paths, reqa  # pylint: disable=g-import-not-at-top

  if name == "scifact":
    root = paths.find_dataset("scifact")
    if root is None:
      raise app.UsageError(f"--data=scifact: not found under "
                           f"{', '.join(map(str, paths.search_roots()))} (set ${paths.DATA_ENV})")
    raw = beir.read_raw(beir.locate_files(root))
    docs = [f"{title} {text}".strip()
            for title, text in zip(raw.corpus_titles, raw.corpus_texts)]
    queries = _sample(raw.query_texts, o.max_queries, o.seed)
    info = {"source": str(root), "texts": "title + text; every query of queries.jsonl"}
  else:
    try:
      data = reqa.load_reqa("squad", "train")
    except (FileNotFoundError, ValueError) as error:
      raise app.UsageError(f"--data=squad: {error}".replace("\n", " ")) from None
    if o.squad_text == "sentence":
      docs = [c.sentence for c in data.candidates]
    else:
      docs = [reqa.candidate_text(c.sentence, c.context) for c in data.candidates]
    queries = data.evaluation_set(max_questions=o.max_queries, seed=o.seed).query_texts
    info = {"source": "ReQA SQuAD v1.1 train candidates", "texts": o.squad_text}
  if o.limit_docs:
    docs = docs[:o.limit_docs]
  return docs, queries, info


def _cache_path(cache_dir: str, name: str, kind: str, texts: Sequence[str], model: str,
                max_length: int) -> pathlib.Path | None:
  if not cache_dir:
    return None
  digest = hashlib.sha256()
  for part in (model, str(max_length), *texts):
    digest.update(part.encode("utf-8") + b"\0")
  return pathlib.Path(cache_dir) / f"{name}_{kind}_{len(texts)}_{digest.hexdigest()[:16]}.npy"


def embed(name: str, kind: str, texts: Sequence[str], max_length: int, o: Options,
          encoder_box: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
  """Embeddings of `texts`, from the cache or encoded now (and cached); and how long it took.

  `encoder_box` holds the encoder once loaded, so that every data set shares one.
  """
  path = _cache_path(o.cache_dir, name, kind, texts, o.model, max_length)
  if path is not None and path.exists():
    return np.load(path), {"cached": str(path), "encode_s": None}
  from retrieval_jax import encode  # pylint: disable=g-import-not-at-top

  if "encoder" not in encoder_box:
    encoder_box["encoder"] = encode.load_encoder(o.model)
  seconds, vectors = bench_harness.timed(lambda: encode.encode_texts(
      encoder_box["encoder"], texts, max_length=max_length, batch_size=o.batch_size,
      desc=f"{name} {kind}"))
  vectors = np.ascontiguousarray(vectors, dtype=np.float32)
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.replace(path)  # A killed run leaves no truncated cache entry.
  return vectors, {"cached": None, "encode_s": seconds,
                   **({"cache_written": str(path)} if path is not None else {})}


def load_data(name: str, o: Options, encoder_box: dict[str, Any]
              ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(documents [n, d], queries [q, d], description) of one data set."""
  if name == "synthetic":
    docs, queries = synthetic_embeddings(o.synthetic_docs, o.synthetic_queries, o.synthetic_dim,
                                         o.seed)
    if o.limit_docs:
      docs = docs[:o.limit_docs]
    return docs, queries, {"source": "synthetic clusters", "model": None}
  doc_texts, query_texts, info = load_texts(name, o)
  docs, doc_info = embed(name, "docs", doc_texts, o.max_length, o, encoder_box)
  queries, query_info = embed(name, "queries", query_texts, o.query_max_length, o, encoder_box)
  norms = np.linalg.norm(docs, axis=1)
  return docs, queries, dict(info, model=o.model, docs_embedding=doc_info,
                             queries_embedding=query_info,
                             max_norm_error=float(np.abs(norms - 1).max()),
                             distinct_docs=len(set(doc_texts)))


# ----------------------------------------------------------------------------- exact and recall


def exact_top_k(queries: np.ndarray, docs: np.ndarray, k: int, block: int = EXACT_BLOCK
                ) -> tuple[np.ndarray, np.ndarray]:
  """(scores, rows) [q, k] of the largest inner products, best first, float32 NumPy."""
  scores_out = np.empty((len(queries), k), np.float32)
  rows_out = np.empty((len(queries), k), np.int64)
  for start in range(0, len(queries), block):
    scores = queries[start:start + block] @ docs.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)  # By score, then by row: ties are stable.
    rows_out[start:start + block] = np.take_along_axis(top, order, axis=1)
    scores_out[start:start + block] = np.take_along_axis(top_scores, order, axis=1)
  return scores_out, rows_out


def recall_at_k(found: np.ndarray, queries: np.ndarray, docs: np.ndarray,
                kth_scores: np.ndarray, block: int = 2048) -> float:
  """Mean over queries of the share of k slots holding a distinct row scoring at least the
  exact k-th score minus TIE_TOLERANCE (rows -1 are empty slots)."""
  found = np.asarray(found, np.int64)
  hits = 0
  for start in range(0, len(found), block):
    rows = np.sort(found[start:start + block], axis=1)
    valid = rows >= 0
    valid[:, 1:] &= rows[:, 1:] != rows[:, :-1]  # A row returned twice counts once.
    gathered = docs[np.where(valid, rows, 0)]
    true_scores = np.einsum("qd,qkd->qk", queries[start:start + block], gathered)
    threshold = kth_scores[start:start + block, None] - TIE_TOLERANCE
    hits += int(np.sum(valid & (true_scores >= threshold)))
  return hits / found.size


# ----------------------------------------------------------------------------- systems


@dataclasses.dataclass
class Built:
  """A built index: how to search it, its settings to sweep and what it costs.

  Attributes:
    search: (queries, k, setting, threads) -> rows [q, k] (-1: empty slot).
    chains: Lists of settings, each from cheapest to costliest along one knob.
    measure: (scratch directory) -> {"index_bytes": the serialized index, other facts}, called
      after the timed build, so that serializing is not billed to building.
    params: Build parameters, as stated in the JSON.
    modes: The thread modes it can be timed in; `skipped_modes` says why not in the others.
    setting_bytes: Bytes a setting needs when that differs from `index_bytes` (after `measure`).
  """
  search: Callable[[np.ndarray, int, Mapping[str, Any], int], np.ndarray]
  chains: list[list[dict[str, Any]]]
  measure: Callable[[pathlib.Path], dict[str, Any]]
  params: dict[str, Any]
  modes: tuple[str, ...] = MODES
  skipped_modes: dict[str, str] = dataclasses.field(default_factory=dict)
  setting_bytes: Callable[[Mapping[str, Any]], int] | None = None


def geometric(low: int, high: int, per_doubling: int) -> list[int]:
  """Integers from low to high (both included), about `per_doubling` steps per doubling."""
  values, i = set(), 0
  while True:
    value = round(low * 2 ** (i / per_doubling))
    if value >= high:
      break
    values.add(value)
    i += 1
  return sorted(values | {high})


def _dir_bytes(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _saved_bytes(save: Callable[[str], Any], path: pathlib.Path) -> int:
  """The size of what `save(path)` writes (a file or a directory), deleted afterwards."""
  save(str(path))
  size = _dir_bytes(path) if path.is_dir() else path.stat().st_size
  if path.is_dir():
    shutil.rmtree(path)
  else:
    path.unlink()
  return size


def build_exact(docs: np.ndarray, o: Options) -> Built:
  del o
  return Built(search=lambda q, k, setting, threads: exact_top_k(q, docs, k)[1],
               chains=[[{}]], measure=lambda scratch: {"index_bytes": int(docs.nbytes)},
               params={"implementation": "NumPy float32 matmul + argpartition",
                       "block": EXACT_BLOCK},
               modes=("multi",),
               skipped_modes={"single": "NumPy's BLAS fixes its threads when it loads "
                              "(start with OPENBLAS_NUM_THREADS=1 for a 1-thread figure)"})


def build_scann(docs: np.ndarray, o: Options) -> Built:
  from retrieval_jax.index import scann_index  # pylint: disable=g-import-not-at-top

  config = scann_index.ScannConfig()
  index = scann_index.ScannIndex.build(docs, config, training_threads=o.multi_threads)

  def measure(scratch):
    # The same build with one training thread: what set_n_training_threads buys.
    one_thread_s = bench_harness.timed(
        lambda: scann_index.ScannIndex.build(docs, config, training_threads=1))[0]
    return {"index_bytes": _saved_bytes(index.save, scratch / "scann"),
            "build_s_1_thread": one_thread_s}

  if index.brute_force:
    chains = [[{}]]
  else:
    leaves = geometric(1, index.num_leaves, o.steps_per_doubling)
    chains = [[{"leaves_to_search": n, "reorder_k": r} for n in leaves]
              for r in sorted(o.scann_reorder_k)]

  def search(queries, k, setting, threads):
    return index.search(queries, k, parallel=threads > 1, **setting)[1]

  return Built(search=search, chains=chains, measure=measure,
               params=dict(dataclasses.asdict(config), num_leaves=index.num_leaves,
                           default_leaves_to_search=index.num_leaves_to_search,
                           training_threads=o.multi_threads))


def build_faiss_hnsw(docs: np.ndarray, o: Options) -> Built:
  import faiss  # pylint: disable=g-import-not-at-top

  faiss.omp_set_num_threads(o.multi_threads)
  index = faiss.IndexHNSWFlat(docs.shape[1], o.hnsw_m, faiss.METRIC_INNER_PRODUCT)
  index.hnsw.efConstruction = o.hnsw_ef_construction
  index.add(docs)

  def search(queries, k, setting, threads):
    faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = setting["ef_search"]
    return index.search(queries, k)[1]

  return Built(search=search, chains=[[{"ef_search": ef}
                                       for ef in geometric(o.k, 1024, o.steps_per_doubling)]],
               measure=lambda scratch: {"index_bytes": len(faiss.serialize_index(index))},
               params={"index": "IndexHNSWFlat", "M": o.hnsw_m,
                       "efConstruction": o.hnsw_ef_construction, "metric": "inner product"})


def pq_subquantizers(dim: int, wanted: int) -> int:
  """The largest divisor of `dim` not above `wanted` (faiss's PQ needs m | dim)."""
  return max(m for m in range(1, min(dim, wanted) + 1) if dim % m == 0)


def build_faiss_ivfpq(docs: np.ndarray, o: Options) -> Built:
  import faiss  # pylint: disable=g-import-not-at-top

  n, dim = docs.shape
  nlist = o.ivf_lists or max(1, round(4 * math.sqrt(n)))
  m = pq_subquantizers(dim, o.ivfpq_m)
  if n < max(nlist, 2 ** o.ivfpq_nbits):
    raise SkipSystem(f"{n} documents are fewer than the {nlist} IVF lists or the "
                     f"{2 ** o.ivfpq_nbits} centres of a {o.ivfpq_nbits}-bit PQ code")
  faiss.omp_set_num_threads(o.multi_threads)
  # `np`: no polysemous training, which only serves Hamming-threshold filtering (off here)
  # and made training ~20x slower.
  factory = f"IVF{nlist},PQ{m}x{o.ivfpq_nbits}np,RFlat"
  refine = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
  refine.train(docs)
  refine.add(docs)
  base = faiss.downcast_index(refine.base_index)
  ivf = faiss.extract_index_ivf(refine)
  sizes = {}

  def measure(scratch):
    del scratch
    sizes.update(base=len(faiss.serialize_index(base)), full=len(faiss.serialize_index(refine)))
    return {"index_bytes": sizes["base"], "index_bytes_with_refine": sizes["full"]}

  def search(queries, k, setting, threads):
    faiss.omp_set_num_threads(threads)
    ivf.nprobe = setting["nprobe"]
    if not setting["k_factor"]:
      return base.search(queries, k)[1]
    refine.k_factor = setting["k_factor"]
    return refine.search(queries, k)[1]

  return Built(search=search,
               chains=[[{"nprobe": p, "k_factor": f}
                        for p in geometric(1, nlist, o.steps_per_doubling)]
                       for f in sorted(o.ivfpq_k_factors)],
               measure=measure,
               setting_bytes=lambda s: sizes["full" if s["k_factor"] else "base"],
               params={"index_factory": factory, "nlist": nlist, "m": m,
                       "nbits": o.ivfpq_nbits, "metric": "inner product",
                       "refine": "IndexRefineFlat (exact float32 re-ranking of k_factor * k "
                                 "PQ candidates) when k_factor > 0"})


def build_hnswlib(docs: np.ndarray, o: Options) -> Built:
  import hnswlib  # pylint: disable=g-import-not-at-top

  index = hnswlib.Index(space="ip", dim=docs.shape[1])
  index.init_index(max_elements=len(docs), M=o.hnsw_m, ef_construction=o.hnsw_ef_construction,
                   random_seed=o.seed)
  index.add_items(docs, np.arange(len(docs)), num_threads=o.multi_threads)

  def search(queries, k, setting, threads):
    index.set_ef(setting["ef"])
    return index.knn_query(queries, k=k, num_threads=threads)[0].astype(np.int64)

  return Built(search=search,
               chains=[[{"ef": ef} for ef in geometric(o.k, 1024, o.steps_per_doubling)]],
               measure=lambda scratch: {
                   "index_bytes": _saved_bytes(index.save_index, scratch / "hnswlib.bin")},
               params={"space": "ip", "M": o.hnsw_m,
                                         "ef_construction": o.hnsw_ef_construction})


def build_usearch(docs: np.ndarray, o: Options) -> Built:
  from usearch import index as usearch_index  # pylint: disable=g-import-not-at-top

  index = usearch_index.Index(ndim=docs.shape[1], metric="ip", dtype="f32",
                              connectivity=o.hnsw_m, expansion_add=o.hnsw_ef_construction)
  index.add(np.arange(len(docs), dtype=np.uint64), docs, threads=o.multi_threads)

  def search(queries, k, setting, threads):
    index.expansion_search = setting["expansion_search"]
    matches = index.search(queries, k, threads=threads)
    rows = matches.keys.astype(np.int64)
    rows[np.arange(k)[None, :] >= matches.counts[:, None]] = -1  # Unfilled slots.
    return rows

  return Built(search=search,
               chains=[[{"expansion_search": e}
                        for e in geometric(o.k, 1024, o.steps_per_doubling)]],
               measure=lambda scratch: {
                   "index_bytes": _saved_bytes(index.save, scratch / "usearch.bin")},
               params={"metric": "ip", "dtype": "f32",
                                         "connectivity": o.hnsw_m,
                                         "expansion_add": o.hnsw_ef_construction})


class SkipSystem(Exception):
  """A system that cannot run on this data or machine; the message says why."""


@dataclasses.dataclass(frozen=True)
class System:
  label: str
  modules: tuple[str, ...]
  build: Callable[[np.ndarray, Options], Built]


SYSTEMS: dict[str, System] = {
    "exact": System("exact (NumPy)", (), build_exact),
    "scann": System("ScaNN (ours)", ("retrieval_jax.index.scann_index",), build_scann),
    "faiss_hnsw": System("faiss HNSW", ("faiss",), build_faiss_hnsw),
    "faiss_ivfpq": System("faiss IVF-PQ", ("faiss",), build_faiss_ivfpq),
    "hnswlib": System("hnswlib", ("hnswlib",), build_hnswlib),
    "usearch": System("USearch", ("usearch",), build_usearch),
}
assert tuple(SYSTEMS) == SYSTEM_NAMES


def missing_library(system: str) -> str | None:
  """Why `system` cannot run here (its library does not import), or None.

  Importing here also keeps import time out of the timed build.
  """
  for module in SYSTEMS[system].modules:
    try:
      importlib.import_module(module)
    except ImportError as error:
      return f"{module} is not installed ({error}); {INSTALL_HINT}"
  return None


# ----------------------------------------------------------------------------- measuring


def release_free_memory() -> None:
  """Collects garbage and hands the C heap's free pages back to the OS (glibc `malloc_trim`).

  Without it, memory an earlier index freed stays resident and the next build reuses it, so
  that build's resident growth reads near zero.
  """
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # Not glibc: the deltas then include reused free memory.
    pass


class RssSampler:
  """Resident memory of this process before, at most during, and after a block (Linux)."""

  def __init__(self, interval_s: float = 0.05):
    self._interval = interval_s
    self._stop = threading.Event()
    self.start = self.peak = self.end = None

  @staticmethod
  def rss() -> int | None:
    try:
      resident = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
      return None
    return resident * os.sysconf("SC_PAGE_SIZE")

  def _watch(self):
    while not self._stop.wait(self._interval):
      self.peak = max(self.peak, self.rss() or 0)

  def __enter__(self):
    release_free_memory()
    self.start = self.peak = self.rss()
    if self.start is not None:
      self._thread = threading.Thread(target=self._watch, daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    if self.start is not None:
      self._stop.set()
      self._thread.join()
      release_free_memory()  # What stays resident: the index, not the build's temporaries.
      self.end = self.rss()
      self.peak = max(self.peak, self.end)

  def report(self) -> dict[str, int | None]:
    if self.start is None:
      return {"rss_growth_bytes": None, "rss_peak_growth_bytes": None}
    return {"rss_growth_bytes": self.end - self.start,
            "rss_peak_growth_bytes": self.peak - self.start}


def plateaued(recalls: Sequence[float], gain: float) -> bool:
  """Whether the last PLATEAU_STEPS steps each gained less than `gain` recall."""
  if len(recalls) <= PLATEAU_STEPS:
    return False
  tail = recalls[-PLATEAU_STEPS - 1:]
  return all(b - a < gain for a, b in zip(tail, tail[1:]))


def sweep(built: Built, queries: np.ndarray, docs: np.ndarray, kth_scores: np.ndarray, k: int,
          o: Options, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Every setting of every chain, timed in each of `built.modes` (ABBA over `o.rounds`)."""
  threads = {"single": 1, "multi": o.multi_threads}
  warm = queries[:min(len(queries), 256)]
  for mode in built.modes:  # Lazy initialisation (thread pools, first touches) goes untimed.
    built.search(warm, k, built.chains[0][0], threads[mode])
  points = []
  for chain in built.chains:
    recalls = []
    for setting in chain:
      sides = {mode: (lambda t=threads[mode]: built.search(queries, k, setting, t))
               for mode in built.modes}
      seconds, results = bench_harness.alternate(sides, o.rounds)
      recall = recall_at_k(results[built.modes[-1]][0], queries, docs, kth_scores)
      del results
      point = {"setting": dict(setting), "recall_at_k": recall}
      if built.setting_bytes is not None:
        point["index_bytes"] = built.setting_bytes(setting)
      for mode in built.modes:
        point[mode] = {"qps": len(queries) / statistics.median(seconds[mode]),
                       "qps_best": len(queries) / min(seconds[mode]), "seconds": seconds[mode]}
      points.append(point)
      recalls.append(recall)
      log(f"  {format_setting(setting) or 'exact'}: recall@{k} {recall:.4f}, " + ", ".join(
          f"{mode} {point[mode]['qps']:.0f} q/s" for mode in built.modes))
      if recall >= o.stop_recall or plateaued(
          recalls, PLATEAU_GAIN_PER_DOUBLING / o.steps_per_doubling):
        break
  return points


def fastest_at_recall(points: Sequence[Mapping[str, Any]], target: float, mode: str
                      ) -> dict[str, Any] | None:
  """The point of `mode` with the most queries/s among those with recall >= target, or None."""
  eligible = [p for p in points if mode in p and p["recall_at_k"] >= target - 1e-12]
  if not eligible:
    return None
  best = max(eligible, key=lambda p: p[mode]["qps"])
  return {"setting": best["setting"], "recall_at_k": best["recall_at_k"],
          "qps": best[mode]["qps"], "qps_best": best[mode]["qps_best"],
          **({"index_bytes": best["index_bytes"]} if "index_bytes" in best else {})}


def target_key(target: float) -> str:
  return f"{target:.2f}"


def ratio_key(target: float, mode: str = "multi") -> str:
  return f"scann_qps_ratio_at_recall_{target_key(target)}" + ("" if mode == "multi" else
                                                                f"_{mode}")


def qps_ratio(systems: Mapping[str, Mapping[str, Any]], target: float, mode: str
              ) -> dict[str, Any]:
  """ScaNN's chosen queries/s at `target` over the best other ANN library's.

  Returns:
    {"ratio": float or None, "scann_qps", "best_other", "best_other_qps", "reason"}.
  """
  def chosen(name):
    system = systems.get(name) or {}
    return (system.get("modes", {}).get(mode, {}).get("at_recall", {}) or {}).get(
        target_key(target))

  out = {"ratio": None, "scann_qps": None, "best_other": None, "best_other_qps": None,
         "reason": None}
  others = {name: chosen(name) for name in ANN_OTHERS if chosen(name)}
  if others:
    best = max(others, key=lambda name: others[name]["qps"])
    out.update(best_other=best, best_other_qps=others[best]["qps"])
  scann = chosen("scann")
  if scann:
    out["scann_qps"] = scann["qps"]
  if not scann:
    out["reason"] = f"ScaNN did not reach recall {target} (or did not run)"
  elif not others:
    out["reason"] = f"no other ANN library reached recall {target} (or none ran)"
  else:
    out["ratio"] = scann["qps"] / out["best_other_qps"]
  return out


def run_system(name: str, docs: np.ndarray, queries: np.ndarray, kth_scores: np.ndarray,
               o: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Builds, measures and sweeps one system; {"skipped": reason} when it cannot run."""
  system = SYSTEMS[name]
  reason = missing_library(name)
  if reason:
    log(f"{name}: skipped: {reason}")
    return {"label": system.label, "skipped": reason}
  log(f"{name}: building on {len(docs)} x {docs.shape[1]} with {o.multi_threads} thread(s)")
  load = bench_harness.load()
  cpu_start = time.process_time()
  try:
    with RssSampler() as rss:
      build_s, built = bench_harness.timed(lambda: system.build(docs, o))
  except SkipSystem as error:
    log(f"{name}: skipped: {error}")
    return {"label": system.label, "skipped": str(error)}
  result: dict[str, Any] = {
      "label": system.label, "params": built.params, "build_s": build_s,
      "build_cpu_s": time.process_time() - cpu_start, "build_threads": o.multi_threads,
      **rss.report(), "load_before_build": load}
  with tempfile.TemporaryDirectory(prefix="bench_index_") as scratch:
    result.update(built.measure(pathlib.Path(scratch)))
  log(f"{name}: built in {build_s:.1f} s, {result['index_bytes'] / 1e6:.1f} MB")
  points = sweep(built, queries, docs, kth_scores, o.k, o, log)
  threads = {"single": 1, "multi": o.multi_threads}
  result["modes"] = {}
  for mode in MODES:
    if mode not in built.modes:
      result["modes"][mode] = {"skipped": built.skipped_modes.get(mode, "not measured")}
      continue
    result["modes"][mode] = {
        "threads": threads[mode],
        "sweep": [{"setting": p["setting"], "recall_at_k": p["recall_at_k"],
                   **{key: p[mode][key] for key in ("qps", "qps_best", "seconds")},
                   **({"index_bytes": p["index_bytes"]} if "index_bytes" in p else {})}
                  for p in points],
        "at_recall": {target_key(t): fastest_at_recall(points, t, mode) for t in o.targets}}
  result["max_recall_at_k"] = max(p["recall_at_k"] for p in points)
  del built
  gc.collect()
  return result


def run_data(name: str, o: Options, encoder_box: dict[str, Any],
             log: Callable[[str], None] = print) -> dict[str, Any]:
  """Every system of `o.systems` on one data set."""
  load_start = bench_harness.load()
  docs, queries, info = load_data(name, o, encoder_box)
  if o.k > len(docs):
    raise app.UsageError(f"--k={o.k} is more than the {len(docs)} documents of {name}")
  log(f"{name}: {len(docs)} documents, {len(queries)} queries, dim {docs.shape[1]}")
  truth_s, (truth_scores, _) = bench_harness.timed(lambda: exact_top_k(queries, docs, o.k))
  kth = truth_scores[:, -1].copy()
  systems = {name_: run_system(name_, docs, queries, kth, o, log) for name_ in o.systems}
  out = {"n_docs": len(docs), "n_queries": len(queries), "dim": int(docs.shape[1]), **info,
         "ground_truth_s": truth_s, "systems": systems,
         "load": {"start": load_start, "end": bench_harness.load()}}
  for target in o.targets:
    for mode in MODES:
      detail = qps_ratio(systems, target, mode)
      out[ratio_key(target, mode)] = detail["ratio"]
      out.setdefault("ratio_detail", {})[ratio_key(target, mode)] = detail
  return out


def run(o: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
  """The whole benchmark (see the module docstring); returns the JSON-ready result."""
  check_options(o)
  started = time.perf_counter()
  result: dict[str, Any] = {
      "benchmark": "bench_index", "k": o.k, "targets": list(o.targets),
      "threads": {"single": 1, "multi": o.multi_threads}, "options": dataclasses.asdict(o),
      "load": {"start": bench_harness.load()},
      "busy_processes": bench_harness.busy_processes(),
      "search_call": "all queries in one batch call per library and setting",
      "recall_rule": f"distinct rows scoring >= exact k-th score - {TIE_TOLERANCE}"}
  encoder_box: dict[str, Any] = {}
  result["data"] = {name: run_data(name, o, encoder_box, log) for name in o.data}
  headline = "squad" if "squad" in result["data"] else o.data[0]
  result["scann_qps_ratio_data"] = headline
  for target in o.targets:
    for mode in MODES:
      result[ratio_key(target, mode)] = result["data"][headline][ratio_key(target, mode)]
  result["load"]["end"] = bench_harness.load()
  result["environment"] = bench_harness.environment()  # After the imports: their versions.
  result["elapsed_s"] = time.perf_counter() - started
  return result


# ----------------------------------------------------------------------------- table


def format_setting(setting: Mapping[str, Any]) -> str:
  return ", ".join(f"{key}={value}" for key, value in setting.items())


def _cell(chosen: Mapping[str, Any] | None, max_recall: float | None) -> str:
  if chosen is None:
    return f"not reached (max {max_recall:.3f})" if max_recall is not None else "–"
  knob = format_setting(chosen["setting"])
  return f"{chosen['qps']:,.0f} ({knob})" if knob else f"{chosen['qps']:,.0f}"


def format_table(result: Mapping[str, Any]) -> str:
  """Markdown: one table per data set, then ScaNN's ratios."""
  threads = result["threads"]["multi"]
  lines = [f"bench_index on {bench_harness.cpu_line(result['environment']['cpu'])}; recall@"
           f"{result['k']}; queries/s (knob) of the fastest setting at each recall, 1 thread "
           f"and {threads}, all queries in one batch call; load {result['load']['start']} -> "
           f"{result['load']['end']}"]
  targets = [target_key(t) for t in result["targets"]]
  for name, data in result["data"].items():
    lines += ["", f"### {name}: {data['n_docs']:,} documents x {data['dim']}, "
              f"{data['n_queries']:,} queries ({data.get('model') or data['source']}); "
              f"load {data['load']['start']} -> {data['load']['end']}", ""]
    header = ["system", "build s", "index MB"]
    header += [f"q/s @{t}, {mode}" for t in targets for mode in ("1 thread",
                                                                   f"{threads} threads")]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system in data["systems"].values():
      if "skipped" in system:
        lines.append(f"| {system['label']} | skipped: {system['skipped']} |")
        continue
      build = f"{system['build_s']:.1f}"
      if "build_s_1_thread" in system:
        build += f" (1 training thread: {system['build_s_1_thread']:.1f})"
      megabytes = f"{system['index_bytes'] / 1e6:.1f}"
      if "index_bytes_with_refine" in system:
        megabytes += f" (with refine: {system['index_bytes_with_refine'] / 1e6:.1f})"
      cells = []
      for t in targets:
        for mode in MODES:
          entry = system["modes"][mode]
          cells.append("–" if "skipped" in entry else
                       _cell(entry["at_recall"][t], system["max_recall_at_k"]))
      lines.append(f"| {system['label']} | {build} | {megabytes} | " + " | ".join(cells) + " |")
    for t, target in zip(targets, result["targets"]):
      parts = []
      for mode, label in (("multi", f"{threads} threads"), ("single", "1 thread")):
        detail = data["ratio_detail"][ratio_key(target, mode)]
        parts.append(f"{label} {detail['ratio']:.2f}x vs {detail['best_other']}"
                     if detail["ratio"] is not None else f"{label}: {detail['reason']}")
      lines.append(f"\nScaNN / best other at recall {t}: " + "; ".join(parts))
  return "\n".join(lines)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  """Runs the benchmark with the (parsed) flags of `flag_values`; prints and writes the result."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  host_malloc.ensure_or_exit(flag_values.malloc, may_reexec=__name__ == "__main__")
  result = run(options_from_flags(flag_values))
  print(format_table(result))
  bench_harness.write_json(result, flag_values.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
