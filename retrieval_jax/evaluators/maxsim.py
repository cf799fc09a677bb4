"""The `maxsim` evaluator: ColBERT retrieval, end to end or re-ranking BM25 candidates.

Entry keys (`configs/common.maxsim_eval`): `data` {name, split, dev_fraction, tfds_dir};
`index`: `maxsim` (every document token in ScaNN, each query vector fetches `token_depth`
tokens, their documents re-ranked with exact MaxSim) or `bm25_maxsim` (BM25's top
`rerank_depth` re-ranked with exact MaxSim); `depth`, `metrics`, `doc_max_length` (None: the
model's), `batch_size`, `save_index`, `progress`, `scann` {...}, `bm25` {k1, b}. Needs the
`colbert` model role (`encode_tokens.TokenEncoder`).

On several processes each encodes and indexes a contiguous share of the documents (of the
BM25 candidates when re-ranking) and the lists are merged (`index.maxsim.search_sharded`,
`index.sharded`); process 0 writes metrics.json, run.trec and eval_info.json (with the index
memory per token and per document, summed over processes).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np
from etils import epath

from retrieval_jax import distributed, encode_tokens, evaluation, files, metrics
from retrieval_jax.evaluators.retrieval import SplitEvaluator
from retrieval_jax.index import BM25Index, ScannConfig, maxsim, sharded

logger = logging.getLogger(__name__)

INDEXES = ("maxsim", "bm25_maxsim")
ROLE = "colbert"


@dataclasses.dataclass(frozen=True)
class MaxSimSettings:
  """How a `maxsim` evaluator retrieves (see the module docstring)."""
  index: str = "maxsim"
  depth: int = 100
  rerank_depth: int = 100
  token_depth: int = 100
  metrics: tuple[str, ...] = evaluation.DEFAULT_METRICS
  doc_max_length: int | None = None
  batch_size: int = 32
  save_index: bool = False
  scann: ScannConfig = ScannConfig()
  bm25_k1: float = 0.9
  bm25_b: float = 0.4
  progress: bool = True

  def __post_init__(self):
    if self.index not in INDEXES:
      raise ValueError(f"index={self.index!r} is not one of {INDEXES}")
    for key in ("depth", "rerank_depth", "token_depth", "batch_size"):
      if getattr(self, key) < 1:
        raise ValueError(f"{key}={getattr(self, key)} must be at least 1")


def settings(entry: Any) -> MaxSimSettings:
  scann = entry.scann
  return MaxSimSettings(
      index=entry.index, depth=int(entry.depth), rerank_depth=int(entry.rerank_depth),
      token_depth=int(entry.token_depth), metrics=tuple(entry.metrics),
      doc_max_length=entry.get("doc_max_length"), batch_size=int(entry.batch_size),
      save_index=bool(entry.get("save_index", False)),
      scann=ScannConfig(num_leaves=scann.num_leaves,
                        num_leaves_to_search=scann.num_leaves_to_search,
                        reorder_k=scann.reorder_k,
                        anisotropic_quantization_threshold=scann.anisotropic_quantization_threshold),
      bm25_k1=entry.bm25.k1, bm25_b=entry.bm25.b, progress=bool(entry.get("progress", True)))


def _with_doc_length(encoder: encode_tokens.TokenEncoder, length: int | None):
  if length is None or length == encoder.format.doc_max_length:
    return encoder
  return dataclasses.replace(encoder,
                             format=dataclasses.replace(encoder.format, doc_max_length=length))


def _summed_memory(index: maxsim.MaxSimIndex) -> dict[str, float]:
  """The index's memory over every process's shard (a collective)."""
  local = index.memory()
  keys = ("token_vectors_bytes", "offsets_bytes", "scann_bytes", "total_bytes", "num_tokens",
          "num_docs")
  summed = distributed.allgather_rows(np.asarray([[local[k] for k in keys]], np.float64)).sum(0)
  total = dict(zip(keys, (int(v) for v in summed)))
  total["bytes_per_token"] = total["total_bytes"] / max(1, total["num_tokens"])
  total["bytes_per_document"] = total["total_bytes"] / max(1, total["num_docs"])
  total["store_bytes_per_token"] = (total["token_vectors_bytes"] + total["offsets_bytes"]) / max(
      1, total["num_tokens"])
  return total


class MaxSimEvaluator(SplitEvaluator):
  """ColBERT retrieval over one split, scored with pytrec_eval."""
  requires = (ROLE,)

  def __init__(self, name: str, entry: Any, defaults: Any = None):
    super().__init__(name, entry, defaults, settings)

  def _corpus_key(self, encoder) -> tuple:
    """Names this process's share of the corpus in this format (`TokenEncoder.corpora`)."""
    ids = self.data.corpus_ids
    return ("corpus", self.data_config["name"], self.data_config["tfds_dir"], len(ids),
            hash(tuple(ids)), encoder.format, distributed.shard_range(len(ids), align=1))

  def _end_to_end(self, encoder, query_vectors, out_dir, timings, extra):
    s, data = self.settings, self.data
    start, stop = distributed.shard_range(len(data.corpus_ids), align=1)
    clock = time.perf_counter()
    key = self._corpus_key(encoder)
    store = encoder.corpora.get(key)
    if store is None:
      tokens = (encode_tokens.encode_documents(encoder, data.doc_strings()[start:stop],
                                               batch_size=s.batch_size, progress=s.progress)
                if stop > start else None)
      store = (maxsim.TokenStore(tokens.vectors, tokens.offsets) if tokens is not None else
               maxsim.TokenStore(np.zeros((0, encoder.dim), np.float16), np.zeros(1, np.int64)))
      encoder.corpora[key] = store
    timings["encode_corpus_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    index = maxsim.MaxSimIndex.build(store, s.scann, doc_start=start)
    timings["index_build_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    scores, rows = maxsim.search_sharded(index, query_vectors, min(s.depth, len(data.corpus_ids)),
                                         s.token_depth)
    timings["search_s"] = time.perf_counter() - clock
    extra.update({f"index_{k}": v for k, v in _summed_memory(index).items()})
    if out_dir is not None and s.save_index:
      count = jax.process_count()
      index.save(out_dir / ("maxsim_index" if count == 1
                            else f"maxsim_index_shard{jax.process_index()}of{count}"))
    return scores, rows

  def _rerank(self, encoder, query_vectors, timings, extra):
    s, data = self.settings, self.data
    clock = time.perf_counter()
    bm25 = BM25Index.build(data.doc_strings(), k1=s.bm25_k1, b=s.bm25_b)
    _, candidates = bm25.search(data.query_texts, min(s.rerank_depth, len(data.corpus_ids)))
    timings["bm25_s"] = time.perf_counter() - clock
    depth = min(s.depth, s.rerank_depth, len(data.corpus_ids))
    wanted = np.unique(candidates[candidates >= 0])
    extra["reranked_documents"] = int(len(wanted))
    encoded = encoder.corpora.get(self._corpus_key(encoder))
    if encoded is not None:
      # An end-to-end evaluator of this round encoded this process's corpus share already.
      timings["encode_corpus_s"] = 0.0
      clock = time.perf_counter()
      start, stop = distributed.shard_range(len(data.corpus_ids), align=1)
      present = (candidates >= start) & (candidates < stop)
      scores, rows = maxsim.rerank(query_vectors, encoded,
                                   np.where(present, candidates - start, -1), depth)
      rows = np.where(rows >= 0, rows + start, -1)
      scores, rows = sharded.merge_across_processes(scores, rows, depth)
      timings["search_s"] = time.perf_counter() - clock
      return scores, rows
    # Only the candidates are encoded; each process a contiguous share of them.
    start, stop = distributed.shard_range(len(wanted), align=1)
    mine = wanted[start:stop]
    clock = time.perf_counter()
    texts = data.doc_strings()
    if len(mine):
      tokens = encode_tokens.encode_documents(encoder, [texts[i] for i in mine],
                                              batch_size=s.batch_size, progress=s.progress,
                                              desc="candidates")
      store = maxsim.TokenStore(tokens.vectors, tokens.offsets)
    timings["encode_corpus_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    if len(mine):
      # Candidates as rows of this process's store (-1: another process's, or none).
      local = np.searchsorted(mine, candidates)
      present = (candidates >= 0) & (local < len(mine))
      present &= mine[np.minimum(local, len(mine) - 1)] == candidates
      scores, rows = maxsim.rerank(query_vectors, store, np.where(present, local, -1), depth)
      rows = np.where(rows >= 0, mine[np.maximum(rows, 0)], -1)
    else:
      scores = np.full((len(query_vectors), depth), -np.inf, np.float32)
      rows = np.full((len(query_vectors), depth), -1, np.int64)
    scores, rows = sharded.merge_across_processes(scores, rows, depth)
    timings["search_s"] = time.perf_counter() - clock
    return scores, rows

  def run(self, models: Any, out_dir: epath.Path | None) -> dict[str, float]:
    s, data = self.settings, self.data
    encoder = _with_doc_length(models.get(ROLE), s.doc_max_length)
    out = files.as_path(out_dir) if out_dir is not None else None
    if out is not None:
      out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    extra: dict[str, Any] = {}
    clock = time.perf_counter()
    query_vectors = encode_tokens.encode_queries_sharded(
        encoder, data.query_texts, batch_size=s.batch_size, progress=s.progress)
    timings["encode_queries_s"] = time.perf_counter() - clock
    if s.index == "maxsim":
      scores, rows = self._end_to_end(encoder, query_vectors, out, timings, extra)
    else:
      scores, rows = self._rerank(encoder, query_vectors, timings, extra)
    extra["queries_per_s"] = len(data.query_ids) / max(timings["search_s"], 1e-9)
    run = metrics.run_from_topk(data.query_ids, data.corpus_ids, scores, rows)
    values = metrics.evaluate(data.qrels, run, s.metrics)
    if out is not None and jax.process_index() == 0:
      evaluation.write_results(out, data, run, {**values, **extra},
                               settings=dataclasses.asdict(s), timings=timings)
    return {**values, **extra}


def build(name: str, entry: Any, defaults: Any = None) -> MaxSimEvaluator:
  return MaxSimEvaluator(name, entry, defaults)
