"""Retrieval evaluation: encode (or BM25) -> search -> TREC run -> pytrec_eval metrics.

The engine behind the `retrieval` evaluator (`retrieval_jax.evaluators.retrieval`), which
`eval/retrieval.py`, `main.py --mode=eval` and training's evaluations run. Writes
`metrics.json` (flat keys such as `ndcg@10`), `run.trec` and, on request,
the embeddings as `.npy`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from etils import epath

from retrieval_jax import distributed, encode, files, metrics
from retrieval_jax.data.beir import BeirData
from retrieval_jax.index import BM25Index, ScannConfig, ScannIndex, exact_search
from retrieval_jax.index import maxp, sharded

logger = logging.getLogger(__name__)

INDEX_TYPES = ("exact", "scann", "bm25")
DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What to retrieve with and what to measure.

  Attributes:
    index: `exact` (JAX top-k), `scann` or `bm25`.
    depth: Documents retrieved per query (the run's depth; >= the largest metric cutoff).
    metrics: Metric names for `retrieval_jax.metrics.evaluate`.
    max_length: Document token cap (per passage with max_passages > 1).
    max_passages: 1 is FirstP (a document is its first `max_length` tokens); more is MaxP
      (ANCE): a document is split into up to this many passages of `max_length` tokens,
      searched as passages, and scored by its best passage.
    query_max_length: Query token cap (None: same as max_length).
    batch_size: Encoding batch size (global, over all local devices).
    embeddings_dtype: `float32` or `float16` for saved embeddings.
    save_embeddings: Write corpus/query embeddings as .npy next to the metrics.
    scann: ScaNN parameters (index='scann').
    check_exact: With index='scann', also run exact search and report the overlap of the
      top-10 (`scann_overlap@10`).
    bm25_k1: BM25 k1 (index='bm25').
    bm25_b: BM25 b (index='bm25').
    progress: Show progress bars.
  """
  index: str = "exact"
  depth: int = 100
  metrics: Sequence[str] = DEFAULT_METRICS
  max_length: int = 256
  max_passages: int = 1
  query_max_length: int | None = None
  batch_size: int = 128
  embeddings_dtype: str = "float32"
  save_embeddings: bool = False
  scann: ScannConfig = ScannConfig()
  check_exact: bool = False
  bm25_k1: float = 0.9
  bm25_b: float = 0.4
  progress: bool = True

  def __post_init__(self):
    if self.index not in INDEX_TYPES:
      raise ValueError(f"index={self.index!r} is not one of {INDEX_TYPES}")
    if self.depth < 1:
      raise ValueError(f"depth must be positive, got {self.depth}")
    if self.max_passages < 1:
      raise ValueError(f"max_passages must be at least 1, got {self.max_passages}")
    if self.embeddings_dtype not in ("float32", "float16"):
      raise ValueError(f"embeddings_dtype must be float32 or float16, got {self.embeddings_dtype}")


@dataclasses.dataclass
class EvalResult:
  """Metrics, the run, and timings of one evaluation."""
  metrics: dict[str, float]
  run: dict[str, dict[str, float]]
  timings: dict[str, float]
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _encode_shard(data: BeirData, encoder: encode.LoadedEncoder,
                  query_encoder: encode.LoadedEncoder, settings: EvalSettings, extra: dict):
  """(all query embeddings, this process's `encode.DocumentShard`).

  One process encodes everything. On several, each encodes a contiguous share of the
  documents (`distributed.shard_range`) and of the queries; the query embeddings are gathered
  on every process (each searches its shard with all of them).
  """
  query_emb = encode.encode_texts_sharded(
      query_encoder, data.query_texts,
      max_length=settings.query_max_length or settings.max_length,
      batch_size=settings.batch_size, progress=settings.progress, desc="queries")
  shard = encode.encode_document_shard(
      encoder, data.doc_strings(), max_length=settings.max_length,
      max_passages=settings.max_passages, dim=query_emb.shape[1],
      batch_size=settings.batch_size, progress=settings.progress,
      desc="corpus" if settings.max_passages == 1 else "passages")
  if settings.max_passages > 1:
    extra["num_passages"] = int(distributed.allgather_rows(
        np.asarray([len(shard.embeddings)], np.int32)).sum())
  return query_emb, shard


def _save_embeddings(out_dir: epath.Path, settings: EvalSettings, query_emb, corpus_emb,
                     doc_of) -> None:
  """Corpus rows (one file per process on several: `..._shard<i>of<n>.npy`) and queries."""
  dtype = np.dtype(settings.embeddings_dtype).type
  count = jax.process_count()
  suffix = f"_shard{jax.process_index()}of{count}" if count > 1 else ""
  if doc_of is None:
    encode.save_embeddings(out_dir / f"corpus_embeddings{suffix}.npy", corpus_emb, dtype)
  else:
    # Rows are passages: keep their documents beside them so the file can be searched again.
    encode.save_embeddings(out_dir / f"passage_embeddings{suffix}.npy", corpus_emb, dtype)
    with (out_dir / f"passage_doc_of{suffix}.npy").open("wb") as f:
      np.save(f, doc_of)
  if jax.process_index() == 0:
    encode.save_embeddings(out_dir / "query_embeddings.npy", query_emb, dtype)


def _dense_search(data: BeirData, encoder: encode.LoadedEncoder,
                  query_encoder: encode.LoadedEncoder, settings: EvalSettings,
                  out_dir: epath.Path | None, timings: dict, extra: dict):
  """Embeds queries and corpus, then searches with exact top-k or ScaNN.

  With max_passages > 1 the corpus rows searched are passages, and the ranked passages are
  folded into ranked documents by their best passage (MaxP). On several processes each
  searches its shard of the documents and the lists are merged (`index.sharded`).
  """
  start_time = time.perf_counter()
  query_emb, shard = _encode_shard(data, encoder, query_encoder, settings, extra)
  corpus_emb, doc_of, doc_start = shard.embeddings, shard.doc_of, shard.start
  shard_docs = shard.stop - shard.start
  timings["encode_s"] = time.perf_counter() - start_time
  if out_dir is not None and settings.save_embeddings:
    _save_embeddings(out_dir, settings, query_emb, corpus_emb, doc_of)
  depth = min(settings.depth, len(data.corpus_ids))

  def searched_depth(docs: int) -> int:
    # k * max_passages passages always hold the exact top-k documents (see index/maxp.py).
    return docs if doc_of is None else min(docs * settings.max_passages, len(corpus_emb))

  def to_docs(scores, rows, docs: int):
    return (scores, rows) if doc_of is None else maxp.max_over_passages(scores, rows, doc_of,
                                                                        docs)

  def exact(queries, corpus, docs):
    return to_docs(*exact_search(queries, corpus, searched_depth(docs),
                                 progress=settings.progress), docs)

  start_time = time.perf_counter()
  if settings.index == "exact":
    scores, indices = sharded.search_shards(query_emb, corpus_emb, doc_start, depth, exact,
                                            shard_size=shard_docs)
  else:
    index = ScannIndex.build(corpus_emb, settings.scann) if len(corpus_emb) else None
    timings["index_build_s"] = time.perf_counter() - start_time
    scores, indices = sharded.search_shards(
        query_emb, corpus_emb, doc_start, depth,
        lambda queries, _, docs: to_docs(*index.search(queries, searched_depth(docs)), docs),
        shard_size=shard_docs)
    if out_dir is not None and index is not None:
      count = jax.process_count()
      name = "scann" if count == 1 else f"scann_shard{jax.process_index()}of{count}"
      with files.writing_dir(out_dir / name) as local:  # ScaNN serialises to local files
        index.save(local)
    if settings.check_exact:
      top = min(10, depth)
      exact_indices = sharded.search_shards(query_emb, corpus_emb, doc_start, top, exact,
                                            shard_size=shard_docs)[1]
      extra["scann_overlap@10"] = topk_overlap(indices[:, :10], exact_indices)
  timings["search_s"] = time.perf_counter() - start_time
  return scores, indices


def topk_overlap(approximate: np.ndarray, exact: np.ndarray) -> float:
  """Mean fraction of each query's exact top-k found in the approximate top-k."""
  hits = [len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(approximate, exact)]
  return float(np.mean(hits))


def _bm25_search(data: BeirData, settings: EvalSettings, timings: dict):
  start = time.perf_counter()
  index = BM25Index.build(data.doc_strings(), k1=settings.bm25_k1, b=settings.bm25_b)
  timings["index_build_s"] = time.perf_counter() - start
  start = time.perf_counter()
  scores, indices = index.search(data.query_texts, min(settings.depth, len(data.corpus_ids)))
  timings["search_s"] = time.perf_counter() - start
  return scores, indices


def evaluate_retrieval(data: BeirData, settings: EvalSettings,
                       encoder: encode.LoadedEncoder | None = None,
                       out_dir: str | os.PathLike | None = None, *,
                       query_encoder: encode.LoadedEncoder | None = None) -> EvalResult:
  """Retrieves for every query of `data` and scores the run against its qrels.

  Args:
    data: Corpus, queries and qrels of one split.
    settings: Index type, depth, lengths, metrics.
    encoder: The dense model (None only for index='bm25'); embeds the corpus, and the
      queries too unless `query_encoder` is given.
    out_dir: If given, receives metrics.json, run.trec (and embeddings / the ScaNN index);
      on several processes, process 0 writes the files and each its own shard's index.
    query_encoder: A separate query tower (DPR); None: `encoder` embeds the queries.

  Returns:
    EvalResult with flat metric keys such as `ndcg@10`.
  """
  if settings.index != "bm25" and encoder is None:
    raise ValueError(f"index={settings.index!r} needs an encoder; only bm25 runs without one")
  out = files.as_path(out_dir) if out_dir is not None else None
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)
  timings: dict[str, float] = {}
  extra: dict[str, Any] = {}
  if settings.index == "bm25":
    scores, indices = _bm25_search(data, settings, timings)
  else:
    scores, indices = _dense_search(data, encoder, query_encoder or encoder, settings, out,
                                    timings, extra)
  run = metrics.run_from_topk(data.query_ids, data.corpus_ids, scores, indices)
  values = metrics.evaluate(data.qrels, run, settings.metrics)
  result = EvalResult(values, run, timings, extra)
  if out is not None and jax.process_index() == 0:  # every process holds the merged run
    write_results(out, data, run, {**values, **extra}, settings=_jsonable(settings),
                  timings=timings)
  return result


def write_results(out: epath.Path, data: BeirData, run: dict, values: dict, *,
                  settings: dict, timings: dict) -> None:
  """run.trec, metrics.json (`values`) and eval_info.json (data, settings, timings)."""
  metrics.write_trec_run(out / "run.trec", run)
  (out / "metrics.json").write_text(json.dumps(values, indent=2, sort_keys=True))
  (out / "eval_info.json").write_text(json.dumps({
      "dataset": data.name, "num_queries": len(data.query_ids),
      "num_docs": len(data.corpus_ids), "settings": settings, "timings": timings},
      indent=2, default=str))


def _jsonable(settings: EvalSettings) -> dict:
  blob = dataclasses.asdict(settings)
  blob["metrics"] = list(settings.metrics)
  return blob


def format_table(rows: dict[str, float]) -> str:
  """A two-column text table of metric -> value."""
  width = max(len(k) for k in rows)
  return "\n".join(f"{k:<{width}}  {v:.4f}" for k, v in rows.items())
