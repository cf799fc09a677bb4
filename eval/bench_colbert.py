"""ColBERT against PyLate: token-vector parity, then end-to-end retrieval on SciFact.

Two parts, with the same weights, markers, lengths and texts on both sides:

1. Parity (`--parity_queries` dev queries, `--parity_docs` documents: the queries' judged ones,
   then corpus order). PyLate's own `model.encode` (`eval/pylate_worker.py --mode=embed`)
   against `encode_tokens.encode_queries` / `encode_documents`: the input ids both feed the
   encoder, the query vectors at every position ([MASK] augmentation included), the kept
   document vectors token by token (PyLate drops punctuation and padding, as we do; compared
   only where both kept the same token ids), and the MaxSim score of every (query, document)
   pair computed exactly from each side's vectors. Also: PyLate's own `colbert_scores` as its
   `rank.rerank` runs it (documents zero-padded, no masks: a padded position scores 0, so a
   query vector whose best real similarity is negative contributes 0 instead of that negative
   number: the only case where PyLate's reranking, hence its Voyager retrieval, differs from
   true MaxSim, which ours, stanford ColBERT and fast-plaid's exact stage compute with padding
   masked out), and our float16 token store's scores (what our index re-ranks with: float16
   rounding of the vectors, up to ~2.4e-4 per component, is reported apart from the parity).
   Target: ids equal, and vectors and exact MaxSim within 1e-4.

2. Benchmark on `--data`/`--split` (SciFact dev: 174 queries, 5,183 documents), `--rounds`
   rounds, each running the systems one after the other (ours, PyLate PLAID, PyLate Voyager):
   - ours: `encode_documents` (float16 store) -> `MaxSimIndex.build` (ScaNN over every token,
     `reorder_k=--scann_reorder_k`, 0 as `configs/common.maxsim_eval`) -> `encode_queries` ->
     `search_tokens` (k' = `--token_depth` tokens per query vector) -> exact MaxSim `rerank`
     (the two halves of `MaxSimIndex.search`, timed apart);
   - PyLate (`eval/pylate_worker.py --mode=retrieve`, a fresh process per system and round):
     `encode` -> PLAID (fast-plaid: 4-bit residuals, n_ivf_probe 8, n_full_scores 8192) or
     Voyager (HNSW M 64, ef 200; k_token = `--token_depth`, then PyLate's `rerank`) ->
     `retrieve`, its defaults otherwise.
   Each reports corpus encode time, index build time, index bytes (ours: `memory()`'s total,
   which stands for RAM, and the size of `save`'s files; PyLate: the files of its index
   directory), query encode time, search time, queries/s without and with query encoding,
   nDCG@10 and recall@100 (pytrec_eval via `retrieval_jax.metrics`). Exact MaxSim over every
   document (`maxsim.brute_force`, once) gives the ceiling and each system's overlap with its
   top 10. The table shows the median over rounds and the min-max; our time is split into
   tokenisation, forward, ScaNN build, token search and rerank.

The model (`--model`): a ColBERT directory (stanford or PyLate layout), a ColBERT training
workdir (`config.json` + `checkpoints/`: its `colbert` role, exported with `colbert_files.save`
for PyLate), or by default all-MiniLM-L6-v2 with a seeded random 384 -> 128 token head saved with
`colbert_files.save`, so the benchmark runs on a fresh machine without training.

PyLate is never a dependency of retrieval_jax: it pins its own torch (fast-plaid builds pin one
torch each), transformers and sentence-transformers, so it lives in its own virtualenv
(`--venv`) and runs as a subprocess. If the venv has no python with PyLate it is created
(`python -m venv`, `pip install pylate voyager==2.1.0`: voyager 2.2 breaks PyLate 1.6's Voyager
index); `--noinstall_pylate` makes that an error instead. Both sides' package versions go into
the JSON.

Threads: PyLate gets `--threads` (torch and fast-plaid's search workers; default every core of
this process's affinity); XLA:CPU and ScaNN's batched search use every core by themselves. On a
shared machine read the `load` entries (os.getloadavg() before each run) and `busy_processes`.

Usage:
  python eval/bench_colbert.py --out=/tmp/bench_colbert.json   # 87 min on 2 busy cores
  python eval/bench_colbert.py --out=/tmp/b.json --limit_docs=200 --rounds=1
  python eval/bench_colbert.py --model=runs/colbert_cpu --out=/tmp/b.json
  python eval/bench_colbert.py --skip_pylate --data=synthetic --out=/tmp/b.json   # ours only
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import numpy as np

from eval import bench_harness
from retrieval_jax import host_malloc

FLAGS = flags.FLAGS
WORKER = pathlib.Path(__file__).resolve().with_name("pylate_worker.py")
PYLATE_PACKAGES = ("pylate", "voyager==2.1.0")
PYLATE_INDEXES = ("plaid", "voyager")
OURS = "ours"
EXACT = "exact"
TOLERANCE = 1e-4
METRICS = ("ndcg@10", "recall@100")
VENV_NOTE = ("PyLate pins its own torch (via fast-plaid), transformers and "
             "sentence-transformers, so it runs in its own virtualenv as a subprocess and is "
             "never a dependency of retrieval_jax.")
# Untimed PyLate encodes before its timed ones (lazy initialisation of torch and the model).
PYLATE_WARMUP = 32


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags on `flag_values` (not at import: other eval CLIs define `--out` too)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("out", None, "Write the results as JSON to this file.", **fv)
  flags.DEFINE_string("model", None, "ColBERT directory or ColBERT training workdir (default: "
                      "MiniLM with a seeded random 128-d token head).", **fv)
  flags.DEFINE_integer("seed", 0, "Seed of the default model's random token head.", **fv)
  flags.DEFINE_string("data", "scifact", "BEIR directory or name, or `synthetic`.", **fv)
  flags.DEFINE_string("split", "dev", "Split whose queries are searched (dev: carved from "
                      "train).", **fv)
  flags.DEFINE_integer("limit_docs", 0, "Index this many documents (the split's judged ones "
                       "first, then corpus order; 0: all).", **fv)
  flags.DEFINE_integer("rounds", 2, "Benchmark rounds (each runs every system once).", **fv)
  flags.DEFINE_string("venv", "/work/venvs/pylate", "PyLate's virtualenv (created if it lacks "
                      "PyLate, unless --noinstall_pylate).", **fv)
  flags.DEFINE_bool("install_pylate", True, "Create --venv and pip install PyLate there when it "
                    "has none.", **fv)
  flags.DEFINE_bool("skip_pylate", False, "Ours only: no parity, no PyLate systems.", **fv)
  flags.DEFINE_list("pylate_indexes", list(PYLATE_INDEXES), "PyLate indexes to benchmark "
                    "(plaid, voyager; empty: parity only).", **fv)
  flags.DEFINE_integer("token_depth", 100, "k': nearest tokens per query vector (ours; "
                       "Voyager's k_token).", **fv)
  flags.DEFINE_integer("k", 100, "Documents retrieved per query.", **fv)
  flags.DEFINE_integer("scann_reorder_k", 0, "Our ScaNN reordering (0: none, as the maxsim "
                       "evaluator: candidates are re-scored exactly).", **fv)
  flags.DEFINE_integer("batch_size", 32, "Encoding batch size, both sides.", **fv)
  flags.DEFINE_integer("threads", 0, "PyLate's torch threads (0: the cores of this process).",
                       **fv)
  flags.DEFINE_integer("parity_queries", 64, "Queries in the parity check.", **fv)
  flags.DEFINE_integer("parity_docs", 64, "Documents in the parity check.", **fv)
  flags.DEFINE_bool("exact", True, "Also run exact MaxSim over every document (once).", **fv)
  flags.DEFINE_string("work_dir", None, "Keep the model export, worker files and indexes here "
                      "(default: a temporary directory, deleted).", **fv)
  flags.DEFINE_integer("worker_timeout", 4 * 3600, "Seconds before a PyLate run is abandoned.",
                       **fv)
  host_malloc.define_flag(flag_values)


# ----------------------------------------------------------------------------- environment


def venv_python(venv: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(venv) / "bin" / "python"


def has_pylate(python: pathlib.Path) -> bool:
  if not python.exists():
    return False
  probe = subprocess.run([str(python), "-c", "import pylate, voyager"], capture_output=True,
                         timeout=300, check=False)
  return probe.returncode == 0


def install_commands(venv: str | os.PathLike, base_python: str = sys.executable
                     ) -> list[list[str]]:
  """The commands that create PyLate's virtualenv (run in order)."""
  python = str(venv_python(venv))
  return [[base_python, "-m", "venv", str(venv)],
          [python, "-m", "pip", "install", "--upgrade", "pip"],
          [python, "-m", "pip", "install", *PYLATE_PACKAGES]]


def ensure_pylate(venv: str, install: bool,
                  runner: Callable[..., Any] = subprocess.run) -> dict[str, Any]:
  """The venv's python with PyLate, creating the venv first when allowed.

  Returns:
    {"venv", "python", "created", "install_s", "note"}.

  Raises:
    app.UsageError: Naming --venv when PyLate is missing and may not be installed, or the
      installation failed.
  """
  python = venv_python(venv)
  info = {"venv": str(venv), "python": str(python), "created": False, "install_s": 0.0,
          "packages": list(PYLATE_PACKAGES), "note": VENV_NOTE}
  if has_pylate(python):
    return info
  if not install:
    raise app.UsageError(f"--venv={venv}: no python with pylate there (and "
                         "--noinstall_pylate); create it or pass --skip_pylate")
  print(f"PyLate not found in {venv}: creating it ({VENV_NOTE})", flush=True)
  start = time.perf_counter()
  for command in install_commands(venv):
    if command[1:3] == ["-m", "venv"] and python.exists():
      continue  # a venv without PyLate: install into it
    done = runner(command, check=False, timeout=3600)
    if done.returncode != 0:
      raise app.UsageError(f"--venv={venv}: `{' '.join(command)}` failed with exit code "
                           f"{done.returncode}")
  if not has_pylate(python):
    raise app.UsageError(f"--venv={venv}: pylate still does not import after installing")
  info.update(created=True, install_s=time.perf_counter() - start)
  return info


# ----------------------------------------------------------------------------- model


@dataclasses.dataclass
class Model:
  """Our encoder, the directory PyLate loads, and where they came from."""
  encoder: Any  # encode_tokens.TokenEncoder
  colbert_dir: pathlib.Path
  info: dict[str, Any]


def _default_model(out: pathlib.Path, seed: int) -> Model:
  from retrieval_jax import encode_tokens  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models import colbert_files, hf  # pylint: disable=g-import-not-at-top

  base = hf.resolve_model_dir("minilm")
  config, params, _ = hf.load_pretrained(base)
  settings = colbert_files.ColbertSettings()
  kernel = np.random.default_rng(seed).normal(0, 0.05, (config.hidden_size, settings.dim))
  params = dict(params, token_head={"linear": {"kernel": kernel.astype(np.float32)}})
  colbert_files.save(out, config, params, tokenizer_dir=base, settings=settings)
  # Both sides read the same files.
  return Model(encode_tokens.load_token_encoder(out), out,
               {"kind": "default", "base": str(base), "token_head": f"normal(0, 0.05), seed "
                f"{seed}", "settings": dataclasses.asdict(settings)})


def _workdir_model(workdir: pathlib.Path, out: pathlib.Path) -> Model:
  from retrieval_jax import distributed, recipes, run_config  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models import colbert_files  # pylint: disable=g-import-not-at-top

  config = run_config.load_config(workdir)
  models, step = recipes.eval_models(config, workdir)
  encoder = models.get("colbert")
  if encoder is None:
    raise app.UsageError(f"--model={workdir}: recipe {config.get('recipe')!r} has no colbert "
                         f"model role (roles: {', '.join(models.roles()) or 'none'})")
  settings = colbert_files.settings_from_config(config.model)
  with tempfile.TemporaryDirectory(prefix="bench_colbert_tokenizer_") as tokenizer_dir:
    encoder.tokenizer.save_pretrained(tokenizer_dir)
    colbert_files.save(out, encoder.model.encoder, distributed.host_local(encoder.params),
                       tokenizer_dir=tokenizer_dir, settings=settings)
  return Model(encoder, out, {"kind": "workdir", "workdir": str(workdir), "step": step,
                              "recipe": config.get("recipe"),
                              "settings": dataclasses.asdict(settings)})


def prepare_model(model: str | None, work_dir: pathlib.Path, seed: int) -> Model:
  """Our encoder and a ColBERT directory PyLate loads (see the module docstring).

  Raises:
    app.UsageError: Naming --model when it is neither a ColBERT directory nor a workdir.
  """
  from retrieval_jax import encode_tokens  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models import colbert_files  # pylint: disable=g-import-not-at-top

  export = work_dir / "colbert_model"
  if not model:
    return _default_model(export, seed)
  path = pathlib.Path(model)
  if not path.is_dir():
    raise app.UsageError(f"--model={model}: not a directory (a ColBERT directory or a ColBERT "
                         "training workdir)")
  if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
    return _workdir_model(path, export)
  if not colbert_files.is_colbert_dir(path):
    raise app.UsageError(f"--model={model}: neither a ColBERT directory (artifact.metadata / "
                         "HF_ColBERT / PyLate Dense) nor a training workdir (checkpoints/)")
  config, settings, _ = colbert_files.describe(path)
  return Model(encode_tokens.load_token_encoder(path), path.resolve(),
               {"kind": "directory", "path": str(path.resolve()),
                "settings": dataclasses.asdict(settings), "hidden_size": config.hidden_size})


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class Corpus:
  """The searched queries and the indexed documents (a subset of the corpus with --limit_docs)."""
  name: str
  query_ids: list[str]
  query_texts: list[str]
  doc_ids: list[str]
  doc_texts: list[str]
  qrels: dict[str, dict[str, int]]
  corpus_size: int


def load_corpus(data: str, split: str, limit_docs: int) -> Corpus:
  """The split's queries and the documents to index (the judged ones first when limited)."""
  from retrieval_jax.data import splits  # pylint: disable=g-import-not-at-top

  try:
    beir = splits.load_split(data, split, key="--data")
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  ids, texts = list(beir.corpus_ids), beir.doc_strings()
  rows = np.arange(len(ids))
  if 0 < limit_docs < len(ids):
    judged = {d for q in beir.query_ids for d in beir.qrels.get(q, {})}
    first = [r for r in rows if ids[r] in judged]
    rest = [r for r in rows if ids[r] not in judged]
    rows = np.sort(np.asarray((first + rest)[:limit_docs]))
  return Corpus(str(data), list(beir.query_ids), list(beir.query_texts),
                [ids[r] for r in rows], [texts[r] for r in rows], beir.qrels, len(ids))


def parity_texts(corpus: Corpus, n_queries: int, n_docs: int) -> tuple[list[str], list[str]]:
  """The first `n_queries` queries and `n_docs` documents: their judged ones, then the rest."""
  queries = corpus.query_ids[:n_queries]
  row_of = {d: r for r, d in enumerate(corpus.doc_ids)}
  rows = sorted({row_of[d] for q in queries for d in corpus.qrels.get(q, {}) if d in row_of})
  rows = rows[:n_docs]
  chosen = set(rows)
  rows += [r for r in range(len(corpus.doc_ids)) if r not in chosen][:n_docs - len(rows)]
  return corpus.query_texts[:n_queries], [corpus.doc_texts[r] for r in rows]


# ----------------------------------------------------------------------------- PyLate worker


def run_worker(python: str | os.PathLike, model_dir: str | os.PathLike,
               inputs: dict[str, Any], work_dir: pathlib.Path, name: str,
               extra_args: Sequence[str], timeout: float, input_name: str | None = None
               ) -> tuple[dict[str, Any], float]:
  """Runs `eval/pylate_worker.py` in PyLate's venv on `inputs` (written to
  `work_dir/<input_name or name>.json` unless there already), output `work_dir/<name>.npz`.

  Returns:
    (every array of its OUT.npz, with `config` and `timings` decoded from JSON; wall seconds
    of the whole process, interpreter start and imports included).

  Raises:
    RuntimeError: The worker failed (with the end of its stderr).
  """
  in_path, out_path = work_dir / f"{input_name or name}.json", work_dir / f"{name}.npz"
  if not in_path.exists():
    in_path.write_text(json.dumps(inputs), encoding="utf-8")
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
  env.pop("XLA_FLAGS", None)
  command = [str(python), str(WORKER), f"--model={model_dir}", f"--input={in_path}",
             f"--output={out_path}", *extra_args]
  start = time.perf_counter()
  done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                        check=False)
  wall = time.perf_counter() - start
  if done.returncode != 0:
    tail = " | ".join(done.stderr.strip().splitlines()[-5:])
    raise RuntimeError(f"pylate_worker {name} exited {done.returncode}: {tail}")
  with np.load(out_path, allow_pickle=False) as npz:
    out = {key: npz[key] for key in npz.files}
  out["config"] = json.loads(str(out.pop("config_json")))
  out["timings"] = json.loads(str(out.pop("timings_json")))
  return out, wall


# ----------------------------------------------------------------------------- parity


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
  return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def maxsim_matrix(queries: np.ndarray, docs: Sequence[np.ndarray],
                  zero_pad_to: int | None = None) -> np.ndarray:
  """float64 [nq, nd] MaxSim of every pair from [nq, Lq, dim] queries and per-document vectors.

  With `zero_pad_to`, as PyLate's `rerank` scores: a document shorter than that length has
  zero vectors in the padding, which bound every query position's best similarity below by 0.
  """
  flat = queries.reshape(-1, queries.shape[-1]).astype(np.float64)
  out = np.zeros((len(queries), len(docs)))
  for j, doc in enumerate(docs):
    best = (flat @ doc.astype(np.float64).T).max(axis=1) if len(doc) else np.full(len(flat),
                                                                                  -np.inf)
    if zero_pad_to is not None and len(doc) < zero_pad_to:
      best = np.maximum(best, 0.0)
    out[:, j] = best.reshape(queries.shape[:2]).sum(axis=1)
  return out


def our_parity_side(encoder, queries: Sequence[str], docs: Sequence[str],
                    batch_size: int) -> dict[str, Any]:
  """Our ids, masks and float32 vectors of the parity texts."""
  from retrieval_jax import encode_tokens  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import colbert_format as cf  # pylint: disable=g-import-not-at-top

  fmt = encoder.format
  q_ids = cf.tokenize_queries(encoder.tokenizer, fmt, queries)
  width = max(map(len, q_ids))
  ids = np.full((len(q_ids), width), fmt.pad_id, np.int64)
  mask = np.zeros_like(ids)
  for row, seq in enumerate(q_ids):
    ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
  query = cf.query_arrays(fmt, ids, mask)
  d_ids = cf.tokenize_documents(encoder.tokenizer, fmt, docs)
  kept = [np.asarray(seq)[cf.document_keep(fmt, np.asarray([seq]), np.ones((1, len(seq))))[0]
                          .astype(bool)] for seq in d_ids]
  q_vectors = encode_tokens.encode_queries(encoder, queries, batch_size=batch_size,
                                           progress=False)
  tokens = encode_tokens.encode_documents(encoder, docs, batch_size=batch_size,
                                          out_dtype=np.float32, progress=False)
  return {"query_ids": query["input_ids"], "query_attention": query["attention_mask"],
          "query_vectors": q_vectors, "doc_kept_ids": kept,
          "doc_vectors": _split(tokens.vectors, tokens.lengths),
          "settings": {"query_marker_id": fmt.query_marker_id, "doc_marker_id": fmt.doc_marker_id,
                       "query_length": fmt.query_length, "doc_max_length": fmt.doc_max_length,
                       "attend_to_mask_tokens": fmt.attend_to_mask_tokens, "dim": encoder.dim,
                       "skiplist_ids": sorted(fmt.skiplist_ids)}}


def _max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                      initial=0.0))


def compare_parity(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
  """Parity figures from our side (`our_parity_side`) and the worker's embed output."""
  from retrieval_jax.index import maxsim  # pylint: disable=g-import-not-at-top

  config, s = theirs["config"], ours["settings"]
  settings = {"query_marker_id": config["query_prefix_id"] == s["query_marker_id"],
              "doc_marker_id": config["document_prefix_id"] == s["doc_marker_id"],
              "query_length": config["query_length"] == s["query_length"],
              "doc_max_length": config["document_length"] == s["doc_max_length"],
              "attend_to_mask_tokens": config["attend_to_expansion_tokens"]
                                       == s["attend_to_mask_tokens"],
              "query_expansion": bool(config["do_query_expansion"]),
              "dim": config["dim"] == s["dim"],
              "skiplist_ids": sorted(config["skiplist_ids"]) == s["skiplist_ids"]}
  nq, lq = ours["query_ids"].shape
  q_ids = _split(theirs["query_input_ids"], theirs["query_input_lengths"])
  q_att = _split(theirs["query_attention_mask"], theirs["query_input_lengths"])
  q_vec = _split(theirs["query_vectors"], theirs["query_lengths"])
  query_ok = [len(q_ids[i]) == lq and np.array_equal(q_ids[i], ours["query_ids"][i])
              and np.array_equal(q_att[i], ours["query_attention"][i]) and len(q_vec[i]) == lq
              for i in range(nq)]
  q_good = np.flatnonzero(query_ok)
  theirs_q = np.stack([q_vec[i] for i in q_good]) if len(q_good) else np.zeros((0, lq, 1))
  ours_q = ours["query_vectors"][q_good]
  expansion = ours["query_attention"][q_good] == 0
  d_ids = _split(theirs["document_input_ids"], theirs["document_input_lengths"])
  d_keep = _split(theirs["document_keep"], theirs["document_input_lengths"])
  d_vec = _split(theirs["document_vectors"], theirs["document_lengths"])
  doc_ok = [np.array_equal(ids[keep], mine) and len(vec) == len(mine)
            for ids, keep, vec, mine in zip(d_ids, d_keep, d_vec, ours["doc_kept_ids"])]
  d_good = np.flatnonzero(doc_ok)
  ours_d = [ours["doc_vectors"][j] for j in d_good]
  theirs_d = [d_vec[j] for j in d_good]
  doc_diffs = [_max_abs(a, b) for a, b in zip(ours_d, theirs_d)]
  f16_diffs = [_max_abs(a.astype(np.float16), b) for a, b in zip(ours_d, theirs_d)]

  exact_ours = maxsim_matrix(ours_q, ours_d)
  exact_theirs = maxsim_matrix(theirs_q, theirs_d)
  store = maxsim.TokenStore(np.concatenate(ours_d) if ours_d else np.zeros((0, s["dim"])),
                            np.concatenate([[0], np.cumsum([len(d) for d in ours_d])]))
  f16_scores = (maxsim.maxsim_scores(ours_q, store, np.arange(len(ours_d)))
                if len(ours_d) and len(ours_q) else np.zeros((len(ours_q), len(ours_d))))
  padded_to = int(theirs["colbert_scores_padded_length"])
  pylate_scores = np.asarray(theirs["colbert_scores"], np.float64)[np.ix_(q_good, d_good)]
  ours_padded = maxsim_matrix(ours_q, ours_d, zero_pad_to=padded_to)
  theirs_padded = maxsim_matrix(theirs_q, theirs_d, zero_pad_to=padded_to)
  changed = np.abs(theirs_padded - exact_theirs) > TOLERANCE
  negative = sum(int(np.sum((ours_q.reshape(-1, ours_q.shape[-1]) @ d.T).max(axis=1) < 0))
                 for d in ours_d)
  result = {
      "n_queries": nq, "n_documents": len(d_ids), "settings_match": settings,
      "pylate_config": {k: v for k, v in config.items() if k != "skiplist_words"},
      "queries_compared": len(q_good), "query_ids_mismatched": np.flatnonzero(
          ~np.asarray(query_ok, bool)).tolist(),
      "query_vectors_max_abs_diff": _max_abs(ours_q, theirs_q),
      "query_vectors_max_abs_diff_attended": _max_abs(ours_q[~expansion], theirs_q[~expansion]),
      "query_vectors_max_abs_diff_expansion": _max_abs(ours_q[expansion], theirs_q[expansion]),
      "expansion_positions": int(expansion.sum()),
      "documents_compared": len(d_good),
      "document_ids_mismatched": np.flatnonzero(~np.asarray(doc_ok, bool)).tolist(),
      "document_vectors_compared": int(sum(len(d) for d in ours_d)),
      "document_vectors_max_abs_diff": max(doc_diffs, default=0.0),
      "document_vectors_float16_max_abs_diff": max(f16_diffs, default=0.0),
      "maxsim_max_abs_diff": _max_abs(exact_ours, exact_theirs),
      "maxsim_max_abs": float(np.max(np.abs(exact_theirs), initial=0.0)),
      "maxsim_float16_store_max_abs_diff": _max_abs(f16_scores, exact_theirs),
      "pylate_colbert_scores_vs_true_maxsim_max_abs_diff": _max_abs(pylate_scores, exact_theirs),
      "pylate_colbert_scores_vs_zero_padded_max_abs_diff": _max_abs(pylate_scores,
                                                                    theirs_padded),
      "ours_zero_padded_vs_pylate_colbert_scores_max_abs_diff": _max_abs(ours_padded,
                                                                         pylate_scores),
      "colbert_scores_padded_length": padded_to,
      "pairs_where_zero_padding_changes_score": int(changed.sum()),
      "query_positions_with_negative_best_similarity": negative,
      "tolerance": TOLERANCE,
  }
  result["within_tolerance"] = bool(
      all(settings[k] for k in settings if k != "query_expansion")
      and len(q_good) == nq and len(d_good) == len(d_ids)
      and max(result["query_vectors_max_abs_diff"], result["document_vectors_max_abs_diff"],
              result["maxsim_max_abs_diff"]) <= TOLERANCE)
  return result


def run_parity(model: Model, python, corpus: Corpus, work_dir: pathlib.Path, *,
               n_queries: int, n_docs: int, batch_size: int, threads: int,
               timeout: float) -> dict[str, Any]:
  """Embeds the parity texts on both sides and compares them (`compare_parity`)."""
  start = time.perf_counter()
  queries, docs = parity_texts(corpus, n_queries, n_docs)
  ours = our_parity_side(model.encoder, queries, docs, batch_size)
  theirs, _ = run_worker(python, model.colbert_dir, {"queries": queries, "documents": docs},
                         work_dir, "parity", ["--mode=embed", f"--batch_size={batch_size}",
                                              f"--threads={threads}"], timeout)
  result = compare_parity(ours, theirs)
  result["pylate_versions"] = theirs["timings"]["versions"]
  result["seconds"] = time.perf_counter() - start
  return result


# ----------------------------------------------------------------------------- benchmark


def evaluate_run(corpus: Corpus, scores: np.ndarray, rows: np.ndarray) -> dict[str, float]:
  from retrieval_jax import metrics  # pylint: disable=g-import-not-at-top

  run = metrics.run_from_topk(corpus.query_ids, corpus.doc_ids, scores, rows)
  return metrics.evaluate(corpus.qrels, run, METRICS)


def top10_overlap(rows: np.ndarray, exact_rows: np.ndarray | None) -> float | None:
  """Mean share of exact MaxSim's top 10 among a system's top 10."""
  if exact_rows is None:
    return None
  shares = [len(set(a[:10][a[:10] >= 0]) & set(b[:10][b[:10] >= 0])) / max(1, np.sum(b[:10] >= 0))
            for a, b in zip(rows, exact_rows)]
  return float(np.mean(shares))


def _directory_bytes(directory: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  gc.collect()  # one system's garbage is not collected on another's clock
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


def warm_up_ours(encoder, corpus: Corpus, batch_size: int) -> dict[str, Any]:
  """Compiles every document width and the query shape before timing (one small call each)."""
  from eval import compile_clock  # pylint: disable=g-import-not-at-top
  from retrieval_jax import encode_tokens  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import colbert_format as cf  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import tokenize as tok  # pylint: disable=g-import-not-at-top

  fmt = encoder.format
  tokenize_s, ids = _timed(lambda: cf.tokenize_documents(encoder.tokenizer, fmt,
                                                         corpus.doc_texts))
  widths = {}
  for row, seq in enumerate(ids):
    widths.setdefault(tok.padded_length(len(seq), 16, fmt.doc_max_length), row)
  start = time.perf_counter()
  with compile_clock.CompileClock() as clock:
    for row in widths.values():
      encode_tokens.encode_documents(encoder, [corpus.doc_texts[row]], batch_size=batch_size,
                                     progress=False)
    encode_tokens.encode_queries(encoder, corpus.query_texts[:1], batch_size=batch_size,
                                 progress=False)
  return {"seconds": time.perf_counter() - start, "compile_s": clock.seconds,
          "compiles": clock.compiles, "document_widths": sorted(widths),
          "tokenize_documents_s": tokenize_s, "tokens_before_keep": int(sum(map(len, ids)))}


def bench_ours(encoder, corpus: Corpus, *, k: int, token_depth: int, batch_size: int,
               reorder_k: int, work_dir: pathlib.Path
               ) -> tuple[dict[str, Any], np.ndarray, np.ndarray, Any]:
  """One round of ours; returns (figures, top-k corpus rows, query vectors, token store)."""
  from eval import compile_clock  # pylint: disable=g-import-not-at-top
  from retrieval_jax import encode_tokens  # pylint: disable=g-import-not-at-top
  from retrieval_jax.index import ScannConfig, maxsim  # pylint: disable=g-import-not-at-top

  out: dict[str, Any] = {"system": OURS, "load": bench_harness.load()}
  with compile_clock.CompileClock() as clock:
    out["encode_corpus_s"], tokens = _timed(lambda: encode_tokens.encode_documents(
        encoder, corpus.doc_texts, batch_size=batch_size, progress=False))
    store = maxsim.TokenStore(tokens.vectors, tokens.offsets)
    out["index_build_s"], index = _timed(lambda: maxsim.MaxSimIndex.build(
        store, ScannConfig(reorder_k=reorder_k)))
    out["encode_queries_s"], queries = _timed(lambda: encode_tokens.encode_queries(
        encoder, corpus.query_texts, batch_size=batch_size, progress=False))
    # MaxSimIndex.search's two halves (`maxsim._search` without a merge), timed apart.
    depth = min(k, index.num_docs)
    out["token_search_s"], (_, docs) = _timed(lambda: index.search_tokens(queries, token_depth))
    candidates = docs.reshape(len(queries), -1)
    out["rerank_s"], (scores, rows) = _timed(lambda: index.rerank(queries, candidates, depth))
  out["compile_s"], out["compiles"] = clock.seconds, clock.compiles
  out["search_s"] = out["token_search_s"] + out["rerank_s"]
  memory = index.memory()
  save_dir = work_dir / "ours_index"
  out["save_s"], _ = _timed(lambda: index.save(save_dir))
  out.update(index_bytes=memory["total_bytes"], index_disk_bytes=_directory_bytes(save_dir),
             index_memory=memory, num_tokens=index.num_tokens,
             **_candidate_stats(candidates, store), scann=_scann_info(index))
  shutil.rmtree(save_dir, ignore_errors=True)
  _rates(out, len(corpus.query_ids))
  out.update(evaluate_run(corpus, scores, rows))
  return out, rows, queries, store


def _candidate_stats(candidates: np.ndarray, store) -> dict[str, float]:
  """Documents and their tokens the exact rerank scores per query (its cost)."""
  lengths = store.lengths()
  unique = [np.unique(c[c >= 0]) for c in candidates]
  return {"candidates_per_query": float(np.mean([len(u) for u in unique])),
          "rerank_tokens_per_query": float(np.mean([lengths[u].sum() for u in unique]))}


def _scann_info(index) -> dict[str, Any] | None:
  scann = index.token_index
  if scann is None:
    return None
  return {"brute_force": scann.brute_force, "num_leaves_to_search": scann.num_leaves_to_search,
          "num_leaves": None if scann.brute_force else (
              scann.config.num_leaves or round(index.num_tokens ** 0.5)),
          "reorder_k": scann.config.reorder_k}


def _rates(out: dict[str, Any], n_queries: int) -> None:
  out["queries_per_s"] = n_queries / out["search_s"] if out["search_s"] > 0 else None
  both = out["search_s"] + out["encode_queries_s"]
  out["queries_per_s_with_encode"] = n_queries / both if both > 0 else None


def bench_pylate(python, model_dir, index: str, corpus: Corpus, *, k: int, token_depth: int,
                 batch_size: int, threads: int, work_dir: pathlib.Path, round_: int,
                 timeout: float) -> tuple[dict[str, Any], np.ndarray]:
  """One round of a PyLate index in a fresh worker process; returns (figures, top-k rows)."""
  inputs = {"queries": corpus.query_texts, "documents": corpus.doc_texts,
            "document_ids": corpus.doc_ids}
  load = bench_harness.load()
  got, wall = run_worker(python, model_dir, inputs, work_dir, f"retrieve_{index}_{round_}",
                         ["--mode=retrieve", f"--index={index}", f"--k={k}",
                          f"--k_token={token_depth}", f"--batch_size={batch_size}",
                          f"--threads={threads}", f"--warmup={PYLATE_WARMUP}"], timeout,
                         input_name="retrieve_inputs")
  (work_dir / f"retrieve_{index}_{round_}.npz").unlink(missing_ok=True)
  t = got["timings"]
  row_of = {d: r for r, d in enumerate(corpus.doc_ids)}
  ids = got["retrieved_ids"]
  rows = np.array([[row_of.get(str(d), -1) if d != "" else -1 for d in line] for line in ids],
                  np.int64).reshape(len(corpus.query_ids), -1)
  scores = np.nan_to_num(got["retrieved_scores"].astype(np.float32), nan=-np.inf)
  out = {"system": f"pylate_{index}", "load": load, "process_s": wall,
         "model_load_s": t["model_load_s"], "warmup_s": t.get("warmup_s"),
         "encode_corpus_s": t["encode_documents_s"], "index_build_s": t["index_build_s"],
         "encode_queries_s": t["encode_queries_s"], "search_s": t["search_s"],
         "search_parts": t.get("search_parts", {}), "index_bytes": t["index_bytes"],
         "index_disk_bytes": t["index_bytes"], "index_file_bytes": t["index_file_bytes"],
         "index_params": t["index_params"], "torch_threads": t["torch_threads"],
         "num_tokens": t["n_document_vectors"], "versions": t["versions"]}
  _rates(out, len(corpus.query_ids))
  out.update(evaluate_run(corpus, scores, rows))
  return out, rows


def bench_exact(queries: np.ndarray, store, corpus: Corpus, *, k: int
                ) -> tuple[dict[str, Any], np.ndarray]:
  """Exact MaxSim of our query vectors over every document of our float16 store (the
  ceiling of the approximate systems; run once)."""
  from retrieval_jax.index import maxsim  # pylint: disable=g-import-not-at-top

  seconds, (scores, rows) = _timed(lambda: maxsim.brute_force(
      queries, store, min(k, store.num_docs)))
  out = {"system": EXACT, "search_s": seconds, "queries_per_s": len(queries) / seconds,
         "num_tokens": store.num_tokens, "load": bench_harness.load()}
  out.update(evaluate_run(corpus, scores, rows))
  return out, rows


# ----------------------------------------------------------------------------- summary


SUMMARY_KEYS = ("encode_corpus_s", "index_build_s", "index_bytes", "index_disk_bytes",
                "encode_queries_s", "search_s", "queries_per_s", "queries_per_s_with_encode",
                "ndcg@10", "recall@100", "exact_top10_overlap", "token_search_s", "rerank_s",
                "candidates_per_query", "rerank_tokens_per_query", "process_s", "model_load_s")


def summarize(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
  """{system: {key: {median, min, max, n}}} over the rounds (numeric keys only)."""
  by_system: dict[str, dict[str, list[float]]] = {}
  for entry in rounds:
    values = by_system.setdefault(entry["system"], {})
    fields = dict(entry, **{f"search_{k}": v for k, v in entry.get("search_parts", {}).items()})
    for key, value in fields.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and (
          key in SUMMARY_KEYS or key.startswith("search_")):
        values.setdefault(key, []).append(float(value))
  return {system: {key: {"median": statistics.median(v), "min": min(v), "max": max(v),
                         "n": len(v)} for key, v in values.items()}
          for system, values in by_system.items()}


LABELS = {OURS: "ours (JAX+ScaNN)", "pylate_plaid": "PyLate PLAID", "pylate_voyager":
          "PyLate Voyager", EXACT: "exact MaxSim"}
TABLE_ROWS = (("corpus encode s", "encode_corpus_s", 1, 1),
              ("index build s", "index_build_s", 1, 1), ("index MB", "index_bytes", 1e-6, 1),
              ("index MB on disk", "index_disk_bytes", 1e-6, 1),
              ("query encode s", "encode_queries_s", 1, 2), ("search s", "search_s", 1, 2),
              ("q/s search", "queries_per_s", 1, 1),
              ("q/s enc+search", "queries_per_s_with_encode", 1, 1),
              ("nDCG@10", "ndcg@10", 1, 4), ("recall@100", "recall@100", 1, 4),
              ("top-10 = exact", "exact_top10_overlap", 1, 3))


def _cell(stat: dict[str, float] | None, scale: float, digits: int) -> str:
  if stat is None:
    return "-"
  med, low, high = (stat[k] * scale for k in ("median", "min", "max"))
  if stat["n"] == 1 or abs(high - low) < 0.5 * 10**-digits:
    return f"{med:.{digits}f}"
  return f"{med:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def format_table(result: dict[str, Any]) -> str:
  """The human-readable summary of `run`'s result."""
  summary, settings = result["summary"], result["settings"]
  systems = [s for s in (OURS, "pylate_plaid", "pylate_voyager", EXACT) if s in summary]
  width = max(24, *(len(_cell(summary[s].get(key), scale, digits)) + 2 for s in systems
                    for _, key, scale, digits in TABLE_ROWS))
  data = result["data"]
  lines = [f"{data['n_queries']} queries x {data['n_docs']} documents ({data['name']} "
           f"{data['split']}), top-{settings['k']}, k'={settings['token_depth']}; median "
           f"[min-max] of {settings['rounds']} round(s); {result['cpu']}, "
           f"{result['threads']} threads; load {result['load']['start'][0]:.1f}->"
           f"{result['load']['end'][0]:.1f}",
           f"{'':18}" + "".join(f"{LABELS[s]:>{width}}" for s in systems)]
  for label, key, scale, digits in TABLE_ROWS:
    lines.append(f"{label:18}" + "".join(
        f"{_cell(summary[s].get(key), scale, digits):>{width}}" for s in systems))
  lines.append("q/s search: queries already encoded; q/s enc+search: query encoding "
               "included. index MB: ours = MaxSimIndex.memory() (float16 store + ScaNN), "
               "PyLate = its index directory's files.")
  ours = summary.get(OURS)
  if ours:
    parts = {"encode corpus": ours["encode_corpus_s"]["median"],
             "ScaNN build": ours["index_build_s"]["median"],
             "encode queries": ours["encode_queries_s"]["median"],
             "token search": ours["token_search_s"]["median"],
             "rerank": ours["rerank_s"]["median"]}
    total = sum(parts.values())
    tokenize = result["warmup"]["tokenize_documents_s"]
    n_queries = result["data"]["n_queries"]
    lines.append("ours, where the time goes (median s): " + ", ".join(
        f"{k} {v:.1f} ({100 * v / total:.0f}%)" for k, v in parts.items()) +
        f"; tokenising the corpus is {tokenize:.1f} s of the encode; the rerank scores "
        f"{ours['candidates_per_query']['median']:.0f} documents "
        f"({ours['rerank_tokens_per_query']['median']:.0f} tokens) per query exactly in "
        f"float64, {1e3 * parts['rerank'] / n_queries:.1f} ms/query; token search "
        f"{1e3 * parts['token search'] / n_queries:.1f} ms/query")
  voyager = summary.get("pylate_voyager", {})
  if "search_token_search_s" in voyager:
    lines.append("PyLate Voyager search (median s): HNSW token search "
                 f"{voyager['search_token_search_s']['median']:.2f}, fetch vectors "
                 f"{voyager['search_fetch_embeddings_s']['median']:.2f}, rerank "
                 f"{voyager['search_rerank_s']['median']:.2f}")
  parity = result.get("parity")
  if parity:
    lines.append(
        f"parity ({parity['queries_compared']}/{parity['n_queries']} queries, "
        f"{parity['documents_compared']}/{parity['n_documents']} documents, "
        f"{parity['document_vectors_compared']} document vectors): max |diff| query vectors "
        f"{parity['query_vectors_max_abs_diff']:.1e} (expansion [MASK] "
        f"{parity['query_vectors_max_abs_diff_expansion']:.1e}), document vectors "
        f"{parity['document_vectors_max_abs_diff']:.1e} (our float16 store "
        f"{parity['document_vectors_float16_max_abs_diff']:.1e}), MaxSim "
        f"{parity['maxsim_max_abs_diff']:.1e} of scores up to {parity['maxsim_max_abs']:.1f} "
        f"(float16 store {parity['maxsim_float16_store_max_abs_diff']:.1e}); "
        f"{'within' if parity['within_tolerance'] else 'NOT within'} {parity['tolerance']:.0e}")
    lines.append(
        f"PyLate colbert_scores (zero-padded to {parity['colbert_scores_padded_length']}) vs "
        f"true MaxSim: max |diff| "
        f"{parity['pylate_colbert_scores_vs_true_maxsim_max_abs_diff']:.1e}, "
        f"{parity['pairs_where_zero_padding_changes_score']} pair(s) changed "
        f"({parity['query_positions_with_negative_best_similarity']} query positions with a "
        f"negative best similarity); our zero-padded emulation vs it "
        f"{parity['ours_zero_padded_vs_pylate_colbert_scores_max_abs_diff']:.1e}")
  if result.get("pylate_env"):
    env = result["pylate_env"]
    versions = result["versions"].get("pylate") or {}
    lines.append(f"PyLate venv {env['venv']} ({'created now' if env['created'] else 'existing'}"
                 f"): " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". " + VENV_NOTE)
  return "\n".join(lines)


# ----------------------------------------------------------------------------- run


def run(*, out_dir: pathlib.Path, model: str | None = None, seed: int = 0,
        data: str = "scifact", split: str = "dev", limit_docs: int = 0, rounds: int = 2,
        venv: str = "/work/venvs/pylate", install_pylate: bool = True, skip_pylate: bool = False,
        pylate_indexes: Sequence[str] = PYLATE_INDEXES, token_depth: int = 100, k: int = 100,
        scann_reorder_k: int = 0, batch_size: int = 32, threads: int = 0,
        parity_queries: int = 64, parity_docs: int = 64, exact: bool = True,
        worker_timeout: float = 4 * 3600) -> dict[str, Any]:
  """Runs the parity check and the benchmark (see the module docstring); returns the result."""
  for name, value in (("rounds", rounds), ("token_depth", token_depth), ("k", k),
                      ("batch_size", batch_size), ("parity_queries", parity_queries),
                      ("parity_docs", parity_docs)):
    if value < 1:
      raise app.UsageError(f"--{name}={value}: must be at least 1")
  for name, value in (("limit_docs", limit_docs), ("threads", threads),
                      ("scann_reorder_k", scann_reorder_k)):
    if value < 0:
      raise app.UsageError(f"--{name}={value}: must be at least 0")
  unknown = sorted(set(pylate_indexes) - set(PYLATE_INDEXES))
  if unknown:
    raise app.UsageError(f"--pylate_indexes: {', '.join(unknown)} not among "
                         f"{', '.join(PYLATE_INDEXES)}")
  import jax  # pylint: disable=g-import-not-at-top

  started = time.perf_counter()
  threads = threads or bench_harness.cpu_info()["usable_cpus"]
  result: dict[str, Any] = {
      "cpu": bench_harness.cpu_model(), "environment": bench_harness.environment(),
      "threads": threads, "devices": len(jax.local_devices()), "platform": jax.default_backend(),
      "load": {"start": bench_harness.load()},
      "busy_processes_start": bench_harness.busy_processes(),
      "versions": {"ours": bench_harness.versions(), "pylate": None},
      "settings": {"k": k, "token_depth": token_depth, "scann_reorder_k": scann_reorder_k,
                   "batch_size": batch_size, "rounds": rounds, "limit_docs": limit_docs,
                   "pylate_indexes": list(pylate_indexes) if not skip_pylate else [],
                   "pylate_warmup": PYLATE_WARMUP, "parity_queries": parity_queries,
                   "parity_docs": parity_docs, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                   "ours_threads": "XLA:CPU and ScaNN's batched search: every core"},
  }
  python = None
  if not skip_pylate:
    result["pylate_env"] = ensure_pylate(venv, install_pylate)
    python = result["pylate_env"]["python"]
  corpus = load_corpus(data, split, limit_docs)
  model_ = prepare_model(model, out_dir, seed)
  result["model"] = dict(model_.info, colbert_dir=str(model_.colbert_dir))
  result["data"] = {"name": corpus.name, "split": split, "n_queries": len(corpus.query_ids),
                    "n_docs": len(corpus.doc_ids), "corpus_size": corpus.corpus_size}
  print(f"model {result['model']['kind']} ({model_.colbert_dir}); {len(corpus.query_ids)} "
        f"queries, {len(corpus.doc_ids)} documents", flush=True)
  if python is not None:
    result["parity"] = run_parity(model_, python, corpus, out_dir, n_queries=parity_queries,
                                  n_docs=parity_docs, batch_size=batch_size, threads=threads,
                                  timeout=worker_timeout)
    result["versions"]["pylate"] = result["parity"].pop("pylate_versions")
    print(f"parity: within {TOLERANCE:.0e}: {result['parity']['within_tolerance']} "
          f"({result['parity']['seconds']:.0f} s)", flush=True)
  result["warmup"] = warm_up_ours(model_.encoder, corpus, batch_size)
  systems = [OURS] + ([] if python is None else [f"pylate_{i}" for i in pylate_indexes])
  per_round, all_rows, ours_vectors = [], [], None
  for round_ in range(rounds):
    for system in systems:
      if system == OURS:
        entry, rows, *ours_vectors = bench_ours(
            model_.encoder, corpus, k=k, token_depth=token_depth, batch_size=batch_size,
            reorder_k=scann_reorder_k, work_dir=out_dir)
      else:
        entry, rows = bench_pylate(python, model_.colbert_dir, system.split("_", 1)[1], corpus,
                                   k=k, token_depth=token_depth, batch_size=batch_size,
                                   threads=threads, work_dir=out_dir, round_=round_,
                                   timeout=worker_timeout)
      entry["round"] = round_
      per_round.append(entry)
      all_rows.append(rows)
      print(f"round {round_} {system}: encode {entry['encode_corpus_s']:.1f} s, build "
            f"{entry['index_build_s']:.1f} s, search {entry['search_s']:.2f} s, nDCG@10 "
            f"{entry['ndcg@10']:.4f}", flush=True)
  if exact:
    # The last round's query vectors and float16 store: the documents our index re-ranks.
    result["exact"], exact_rows = bench_exact(*ours_vectors, corpus, k=k)
    result["exact"]["exact_top10_overlap"] = 1.0
    for entry, rows in zip(per_round, all_rows):
      entry["exact_top10_overlap"] = top10_overlap(rows, exact_rows)
    print(f"exact MaxSim: {result['exact']['search_s']:.1f} s, nDCG@10 "
          f"{result['exact']['ndcg@10']:.4f}", flush=True)
  del ours_vectors
  result["rounds"] = per_round
  result["summary"] = summarize(per_round + ([result["exact"]] if exact else []))
  result["load"]["end"] = bench_harness.load()
  result["busy_processes_end"] = bench_harness.busy_processes()
  result["elapsed_s"] = time.perf_counter() - started
  return result


@contextlib.contextmanager
def _work_dir(path: str | None):
  if path:
    pathlib.Path(path).mkdir(parents=True, exist_ok=True)
    yield pathlib.Path(path)
  else:
    with tempfile.TemporaryDirectory(prefix="bench_colbert_") as scratch:
      yield pathlib.Path(scratch)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  """Runs the benchmark with the (parsed) flags of `flag_values`; prints and writes the result."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  host_malloc.ensure_or_exit(flag_values.malloc, may_reexec=__name__ == "__main__")
  fv = flag_values
  with _work_dir(fv.work_dir) as work_dir:
    result = run(out_dir=work_dir, model=fv.model, seed=fv.seed, data=fv.data, split=fv.split,
                 limit_docs=fv.limit_docs, rounds=fv.rounds, venv=fv.venv,
                 install_pylate=fv.install_pylate, skip_pylate=fv.skip_pylate,
                 pylate_indexes=[i.strip() for i in fv.pylate_indexes if i.strip()],
                 token_depth=fv.token_depth, k=fv.k, scann_reorder_k=fv.scann_reorder_k,
                 batch_size=fv.batch_size, threads=fv.threads, parity_queries=fv.parity_queries,
                 parity_docs=fv.parity_docs, exact=fv.exact, worker_timeout=fv.worker_timeout)
  print(format_table(result))
  bench_harness.write_json(result, fv.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
