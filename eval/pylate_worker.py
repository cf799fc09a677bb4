"""PyLate reference worker: ColBERT token vectors and PLAID / Voyager retrieval, as PyLate does them.

This script runs INSIDE a separate virtual environment that has PyLate (and torch, fast-plaid,
voyager) installed, never in retrieval_jax's own environment, and it imports nothing from
retrieval_jax. retrieval_jax calls it as a subprocess to get reference numbers to compare with:

  /path/to/pylate-venv/bin/python eval/pylate_worker.py --model=DIR --input=IN.json \
      --output=OUT.npz [--index=plaid|voyager] [--index_dir=D] [--k=10] [--batch_size=32] \
      [--threads=N] [--warmup=N]

DIR is a PyLate ColBERT directory (sentence-transformers modules: the encoder at the top level,
`1_Dense/` with the projection, `config_sentence_transformers.json` with query_prefix,
document_prefix, query_length, document_length, attend_to_expansion_tokens, skiplist_words,
do_query_expansion) or a stanford-nlp ColBERT checkpoint directory. It is loaded with no network
access (HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are set unless already set).

IN.json: {"queries": [text, ...], "documents": [text, ...], "document_ids": [id, ...],
          "mode": "embed" | "retrieve" | "both"}
`document_ids` is optional (default "0", "1", ...); ids are used as strings and must be unique.
`--mode` on the command line overrides the file's mode (default "both").

OUT.npz (np.load(OUT, allow_pickle=False) reads every entry):
  always:
    config_json          the model's ColBERT settings as PyLate resolved them (JSON string)
    timings_json         the timings below plus sizes and package versions (JSON string)
  "embed" / "both" (PyLate's own `model.encode` output, shapes and trimming kept):
    query_vectors        float32 [sum of query_lengths, dim]: `encode(queries, is_query=True)`,
                         concatenated in input order (with query expansion each query has
                         query_length vectors, the [MASK] positions included)
    query_lengths        int64 [n_queries]
    document_vectors     float32 [sum of document_lengths, dim]: `encode(documents,
                         is_query=False)` (padding and skiplist/punctuation vectors removed)
    document_lengths     int64 [n_documents]
    query_input_ids      int64 [sum of query_input_lengths]: the ids PyLate's `tokenize` feeds
                         the encoder (prefix after [CLS], [MASK] padding), one row per query
    query_input_lengths  int64 [n_queries]
    query_attention_mask int64, aligned with query_input_ids (0 at [MASK] padding unless
                         attend_to_expansion_tokens)
    query_keep           bool, aligned with query_input_ids: which positions have a vector
    document_input_ids, document_input_lengths, document_attention_mask, document_keep: the
                         same for documents (padding stripped; keep = not in the skiplist)
    colbert_scores       float32 [n_queries, n_documents]: PyLate's own score of every pair,
                         `pylate.scores.colbert_scores` on the queries and the documents
                         zero-padded to the longest one, without masks, exactly as
                         `pylate.rank.rerank` scores a candidate list (a padded position scores
                         0, so a query vector whose best real similarity is negative gets 0
                         instead: PyLate's reranking differs from true MaxSim there)
    colbert_scores_padded_length  int: the document length they were padded to
  "retrieve" / "both":
    retrieved_ids        str [n_queries, k] (rows shorter than k are padded with "")
    retrieved_scores     float32 [n_queries, k] (padding: NaN)
    retrieved_counts     int64 [n_queries]
    timings: encode_queries_s, encode_documents_s, index_build_s, search_s, queries_per_s
    (search only), queries_per_s_with_encode, search_parts (voyager: seconds in the HNSW
    token search, in fetching the candidates' vectors and in reranking; empty for PLAID, whose
    search is one call into fast-plaid), index_bytes (sum of the sizes of the files under the
    index directory after the build) and index_file_bytes (per file: fast-plaid also keeps the
    raw float32 vectors, embeddings.npy, for collections of at most 1,000 documents)

With --index_dir unset the index is built in a temporary directory, measured, then deleted.
`--threads` sets torch's threads and fast-plaid's search workers (0: their defaults, every
core). `--warmup=N` encodes the first N documents and queries once, untimed, before the timed
encodes (PyTorch's lazy initialisation and allocator warm-up are then not billed to them).
One summary line is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

MODES = ("embed", "retrieve", "both")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description="PyLate ColBERT token vectors and PLAID/Voyager retrieval (run in the PyLate venv).")
  parser.add_argument("--model", required=True, help="PyLate ColBERT (or stanford-nlp) directory")
  parser.add_argument("--input", required=True, help="IN.json with queries, documents, ...")
  parser.add_argument("--output", required=True, help="OUT.npz to write")
  parser.add_argument("--mode", choices=MODES, default=None,
                      help="overrides IN.json's mode (default: the file's, else both)")
  parser.add_argument("--index", choices=("plaid", "voyager"), default="plaid")
  parser.add_argument("--index_dir", default=None,
                      help="where the index is built (default: a temporary directory, deleted)")
  parser.add_argument("--k", type=int, default=10, help="documents retrieved per query")
  parser.add_argument("--batch_size", type=int, default=32, help="encoding batch size")
  parser.add_argument("--device", default="cpu")
  parser.add_argument("--threads", type=int, default=0,
                      help="torch threads and fast-plaid search workers (0: their defaults)")
  parser.add_argument("--warmup", type=int, default=0,
                      help="encode the first N documents and queries untimed before timing")
  # Index quality/speed knobs; defaults are PyLate's.
  parser.add_argument("--k_token", type=int, default=100,
                      help="voyager: nearest token vectors per query token (candidate generation)")
  parser.add_argument("--ef_search", type=int, default=200, help="voyager: HNSW ef at search")
  parser.add_argument("--ef_construction", type=int, default=200, help="voyager: HNSW ef at build")
  parser.add_argument("--M", type=int, default=64, help="voyager: HNSW graph degree")
  parser.add_argument("--nbits", type=int, default=4, help="plaid: residual bits per dimension")
  parser.add_argument("--kmeans_niters", type=int, default=4, help="plaid: k-means iterations")
  parser.add_argument("--n_ivf_probe", type=int, default=8, help="plaid: centroids probed per query token")
  parser.add_argument("--n_full_scores", type=int, default=8192,
                      help="plaid: candidates kept after centroid scoring (a quarter are decompressed)")
  parser.add_argument("--seed", type=int, default=42, help="plaid: k-means seed")
  return parser.parse_args(argv)


def read_input(path: str, mode_override: str | None) -> tuple[list[str], list[str], list[str], str]:
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict):
    raise SystemExit(f"{path}: expected a JSON object")
  queries = [str(q) for q in data.get("queries", [])]
  documents = [str(d) for d in data.get("documents", [])]
  ids = data.get("document_ids")
  ids = [str(i) for i in range(len(documents))] if ids is None else [str(i) for i in ids]
  if len(ids) != len(documents):
    raise SystemExit(f"{path}: {len(ids)} document_ids for {len(documents)} documents")
  if len(set(ids)) != len(ids):
    raise SystemExit(f"{path}: document_ids are not unique")
  mode = mode_override or data.get("mode", "both")
  if mode not in MODES:
    raise SystemExit(f"{path}: mode must be one of {MODES}, got {mode!r}")
  return queries, documents, ids, mode


def model_config(model) -> dict:
  """The ColBERT settings PyLate resolved (from the directory's files and its defaults)."""
  first = model[0]
  return {
      "query_prefix": model.query_prefix,
      "document_prefix": model.document_prefix,
      "query_prefix_id": model.query_prefix_id,
      "document_prefix_id": model.document_prefix_id,
      "query_length": model.query_length,
      "document_length": model.document_length,
      "do_query_expansion": bool(model.do_query_expansion),
      "attend_to_expansion_tokens": bool(model.attend_to_expansion_tokens),
      "skiplist_words": list(model.skiplist_words),
      "skiplist_ids": [int(i) for i in model.skiplist],
      "pad_token_id": model.tokenizer.pad_token_id,
      "mask_token_id": model.tokenizer.mask_token_id,
      "vocab_size": len(model.tokenizer),
      "do_lower_case": bool(getattr(first, "do_lower_case", False)),
      "attn_implementation": getattr(first.auto_model.config, "_attn_implementation", None),
      "modules": [type(m).__module__ + "." + type(m).__name__ for m in model],
      "dim": int(model[-1].out_features),
  }


def encode(model, texts: list[str], is_query: bool, batch_size: int) -> list[np.ndarray]:
  if not texts:
    return []
  out = model.encode(texts, is_query=is_query, batch_size=batch_size, show_progress_bar=False,
                     convert_to_numpy=True)
  return [np.asarray(v, dtype=np.float32) for v in out]


def token_inputs(model, texts: list[str], is_query: bool, batch_size: int):
  """Per text: the ids PyLate's `tokenize` gives the encoder, the attention mask, and which
  positions `encode` keeps a vector for (mirrors ColBERT.encode's masks)."""
  import torch

  ids_rows, att_rows, keep_rows = [], [], []
  for start in range(0, len(texts), batch_size):
    features = model.tokenize(texts[start:start + batch_size], is_query=is_query)
    input_ids = features["input_ids"]
    attention = features["attention_mask"]
    if is_query and model.do_query_expansion:
      keep = torch.ones_like(input_ids, dtype=torch.bool)
      length = torch.full((input_ids.shape[0],), input_ids.shape[1])
    else:
      # Unpadded length: documents and unexpanded queries are right-padded.
      length = attention.sum(dim=1)
      keep = attention.bool()
      if not is_query:
        keep = torch.logical_and(keep, model.skiplist_mask(input_ids, model.skiplist))
    for row in range(input_ids.shape[0]):
      n = int(length[row])
      ids_rows.append(input_ids[row, :n].numpy().astype(np.int64))
      att_rows.append(attention[row, :n].numpy().astype(np.int64))
      keep_rows.append(keep[row, :n].numpy().astype(bool))
  return ids_rows, att_rows, keep_rows


def flatten(rows: list[np.ndarray], width: int | None, dtype) -> tuple[np.ndarray, np.ndarray]:
  lengths = np.array([len(r) for r in rows], dtype=np.int64)
  if rows:
    flat = np.concatenate(rows, axis=0).astype(dtype)
  else:
    flat = np.zeros((0, width) if width else (0,), dtype=dtype)
  return flat, lengths


def dir_files(path: str) -> dict[str, int]:
  """Size in bytes of every file under `path`, by path relative to it."""
  sizes = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      if not os.path.islink(full):
        sizes[os.path.relpath(full, path)] = os.path.getsize(full)
  return dict(sorted(sizes.items()))


def build_index(args, index_dir: str, dim: int, ids: list[str], doc_vectors: list[np.ndarray]):
  import torch
  from pylate import indexes

  # fast-plaid samples the k-means training documents with torch's global generator
  # (torch.randperm, unseeded), so the seed is set here for a reproducible build.
  torch.manual_seed(args.seed)
  if args.index == "plaid":
    index = indexes.PLAID(index_folder=index_dir, index_name="plaid", override=True,
                          nbits=args.nbits, kmeans_niters=args.kmeans_niters, seed=args.seed,
                          use_triton=False, n_ivf_probe=args.n_ivf_probe,
                          n_full_scores=args.n_full_scores, show_progress=False,
                          device=args.device, num_threads=args.threads or None)
  else:
    index = indexes.Voyager(index_folder=index_dir, index_name="voyager", override=True,
                            embedding_size=dim, M=args.M, ef_construction=args.ef_construction,
                            ef_search=args.ef_search)
  try:
    index.add_documents(documents_ids=ids, documents_embeddings=doc_vectors)
  except RuntimeError as error:
    # fast-plaid trains its residual codec on a held-out share of the vectors and refuses
    # tiny collections ("Cannot train codec: no heldout samples were generated").
    raise SystemExit(f"{args.index} index over {len(ids)} documents "
                     f"({sum(len(v) for v in doc_vectors)} vectors) failed: {error}") from error
  return index


class TimedIndex:
  """A token index (Voyager) that times what `retrieve.ColBERT` asks of it: the token search
  (`__call__`) and the candidates' vectors (`get_documents_embeddings`); the rest of a
  retrieval is PyLate's reranking."""

  def __init__(self, index):
    self._index = index
    self.seconds = {"token_search_s": 0.0, "fetch_embeddings_s": 0.0}

  @property
  def is_end_to_end_index(self) -> bool:
    return self._index.is_end_to_end_index

  def _timed(self, key, fn, *args, **kwargs):
    start = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      self.seconds[key] += time.perf_counter() - start

  def __call__(self, *args, **kwargs):
    return self._timed("token_search_s", self._index, *args, **kwargs)

  def get_documents_embeddings(self, *args, **kwargs):
    return self._timed("fetch_embeddings_s", self._index.get_documents_embeddings, *args,
                       **kwargs)

  def __getattr__(self, name):
    return getattr(self._index, name)


def pairwise_scores(query_vectors: list[np.ndarray], doc_vectors: list[np.ndarray]
                    ) -> tuple[np.ndarray, int]:
  """PyLate's score of every (query, document) pair, as `rank.rerank` computes a candidate
  list's: documents zero-padded to the longest (`pad_sequence(padding_value=0)`), then
  `colbert_scores` without masks."""
  import torch
  from pylate.scores import colbert_scores

  if not query_vectors or not doc_vectors:
    return np.zeros((len(query_vectors), len(doc_vectors)), np.float32), 0
  pad = torch.nn.utils.rnn.pad_sequence
  queries = pad([torch.from_numpy(v) for v in query_vectors], batch_first=True, padding_value=0)
  documents = pad([torch.from_numpy(v) for v in doc_vectors], batch_first=True, padding_value=0)
  with torch.no_grad():
    scores = colbert_scores(queries_embeddings=queries, documents_embeddings=documents)
  return scores.numpy().astype(np.float32), int(documents.shape[1])


def versions() -> dict:
  from importlib import metadata

  found = {"python": sys.version.split()[0]}
  for name in ("pylate", "torch", "transformers", "sentence-transformers", "fast-plaid",
               "voyager", "numpy"):
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = None
  return found


def main(argv=None) -> int:
  args = parse_args(argv)
  queries, documents, ids, mode = read_input(args.input, args.mode)
  if mode in ("retrieve", "both") and not documents:
    raise SystemExit("retrieval needs at least one document")

  import torch
  if args.threads > 0:
    torch.set_num_threads(args.threads)
  from pylate import models, retrieve

  t0 = time.perf_counter()
  model = models.ColBERT(model_name_or_path=args.model, device=args.device)
  load_s = time.perf_counter() - t0
  config = model_config(model)
  dim = config["dim"]

  warmup_s = 0.0
  if args.warmup > 0:
    t0 = time.perf_counter()
    encode(model, documents[:args.warmup], is_query=False, batch_size=args.batch_size)
    encode(model, queries[:args.warmup], is_query=True, batch_size=args.batch_size)
    warmup_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  doc_vectors = encode(model, documents, is_query=False, batch_size=args.batch_size)
  encode_documents_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  query_vectors = encode(model, queries, is_query=True, batch_size=args.batch_size)
  encode_queries_s = time.perf_counter() - t0

  out: dict[str, np.ndarray] = {}
  timings = {
      "mode": mode, "model_load_s": load_s, "warmup_s": warmup_s, "warmup": args.warmup,
      "encode_queries_s": encode_queries_s,
      "encode_documents_s": encode_documents_s, "n_queries": len(queries),
      "n_documents": len(documents), "n_query_vectors": int(sum(len(v) for v in query_vectors)),
      "n_document_vectors": int(sum(len(v) for v in doc_vectors)), "batch_size": args.batch_size,
      "device": args.device, "torch_threads": torch.get_num_threads(), "versions": versions(),
  }

  if mode in ("embed", "both"):
    out["query_vectors"], out["query_lengths"] = flatten(query_vectors, dim, np.float32)
    out["document_vectors"], out["document_lengths"] = flatten(doc_vectors, dim, np.float32)
    for side, texts, is_query in (("query", queries, True), ("document", documents, False)):
      ids_rows, att_rows, keep_rows = token_inputs(model, texts, is_query, args.batch_size)
      out[f"{side}_input_ids"], out[f"{side}_input_lengths"] = flatten(ids_rows, None, np.int64)
      out[f"{side}_attention_mask"], _ = flatten(att_rows, None, np.int64)
      out[f"{side}_keep"], _ = flatten(keep_rows, None, bool)
      kept = np.array([int(k.sum()) for k in keep_rows], dtype=np.int64)
      lengths = out[f"{side}_lengths"]
      if not np.array_equal(kept, lengths):  # the tokenisation mirror disagrees with encode
        raise SystemExit(f"{side}: kept positions {kept.tolist()} != vector counts "
                         f"{lengths.tolist()}")
    out["colbert_scores"], padded = pairwise_scores(query_vectors, doc_vectors)
    out["colbert_scores_padded_length"] = np.array(padded, dtype=np.int64)

  search_s = None
  if mode in ("retrieve", "both"):
    temporary = args.index_dir is None
    index_dir = tempfile.mkdtemp(prefix="pylate_index_") if temporary else args.index_dir
    try:
      t0 = time.perf_counter()
      index = build_index(args, index_dir, dim, ids, doc_vectors)
      index_build_s = time.perf_counter() - t0
      index_files = dir_files(index_dir)
      timed_index = TimedIndex(index)
      retriever = retrieve.ColBERT(index=timed_index)
      results = []
      t0 = time.perf_counter()
      if queries:
        results = retriever.retrieve(queries_embeddings=query_vectors, k=args.k,
                                     k_token=max(args.k_token, args.k), device=args.device)
      search_s = time.perf_counter() - t0
    finally:
      if temporary:
        shutil.rmtree(index_dir, ignore_errors=True)
    n = len(queries)
    got_ids = np.full((n, args.k), "", dtype=object)
    got_scores = np.full((n, args.k), np.nan, dtype=np.float32)
    counts = np.zeros(n, dtype=np.int64)
    for row, hits in enumerate(results):
      hits = list(hits)[:args.k]
      counts[row] = len(hits)
      for col, hit in enumerate(hits):
        got_ids[row, col] = str(hit["id"])
        got_scores[row, col] = float(hit["score"])
    out["retrieved_ids"] = got_ids.astype(str) if n else np.zeros((0, args.k), dtype="<U1")
    out["retrieved_scores"] = got_scores
    out["retrieved_counts"] = counts
    timings.update({
        "index": args.index, "index_dir": None if temporary else os.path.abspath(index_dir),
        "index_build_s": index_build_s, "search_s": search_s,
        "queries_per_s": (n / search_s) if search_s > 0 and n else None,
        "queries_per_s_with_encode": ((n / (search_s + encode_queries_s))
                                      if n and search_s + encode_queries_s > 0 else None),
        "search_parts": ({} if index.is_end_to_end_index else dict(
            timed_index.seconds, rerank_s=search_s - sum(timed_index.seconds.values()))),
        "index_bytes": sum(index_files.values()), "index_file_bytes": index_files, "k": args.k,
        "index_params": ({"nbits": args.nbits, "kmeans_niters": args.kmeans_niters,
                          "n_ivf_probe": args.n_ivf_probe, "n_full_scores": args.n_full_scores,
                          "seed": args.seed} if args.index == "plaid" else
                         {"M": args.M, "ef_construction": args.ef_construction,
                          "ef_search": args.ef_search, "k_token": max(args.k_token, args.k)}),
    })

  out["config_json"] = np.array(json.dumps(config))
  out["timings_json"] = np.array(json.dumps(timings))
  out_dir = os.path.dirname(os.path.abspath(args.output))
  os.makedirs(out_dir, exist_ok=True)
  np.savez(args.output, **out)

  line = (f"pylate_worker: mode={mode} queries={len(queries)} documents={len(documents)} "
          f"dim={dim} encode_q={encode_queries_s:.3f}s encode_d={encode_documents_s:.3f}s")
  if search_s is not None:
    qps = timings["queries_per_s"]
    line += (f" index={args.index} build={timings['index_build_s']:.3f}s search={search_s:.3f}s"
             f" qps={'-' if qps is None else f'{qps:.1f}'} index_bytes={timings['index_bytes']}")
  print(line + f" -> {args.output}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
