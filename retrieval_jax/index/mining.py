"""Hard negatives: a candidate pool per query (BM25 or dense retrieval), resampled each epoch.

Mining is the slow part: `bm25_negative_pool` (DPR) runs once; `dense_negative_pool` (ANCE) runs
at every index refresh, on embeddings of the model being trained. A pool is saved with `save_pool`
and read back with `load_pool`. Sampling (`sample_negatives`) is cheap and runs every epoch from an
RNG seeded by (seed, epoch), so every epoch sees different negatives yet a rerun sees the same ones.

A positive is a document judged with relevance > 0. Documents judged 0 are not positives: the
annotator saw them and found them not relevant, which makes them good negatives, so they stay.
No positive is ever returned as a negative, by either the pool or the random fallback.
"""

import dataclasses
import os

import numpy as np
from etils import epath

from retrieval_jax import distributed
from retrieval_jax.data.beir import BeirData
from retrieval_jax.index.bm25 import BM25Index
from retrieval_jax.index import maxp, sharded
from retrieval_jax.index.exact import exact_search
from retrieval_jax.index.scann_index import ScannConfig, ScannIndex


@dataclasses.dataclass(frozen=True)
class NegativePool:
  """Ranked candidate negatives per training query.

  Attributes:
    query_ids: the queries, in the order of the rows below (`BeirData.query_ids`).
    candidates: [num_queries, depth] int64 corpus rows, best BM25 score first, every positive
      removed; -1 pads the slots past `counts` (a query matching few documents).
    counts: [num_queries] int64, the number of valid candidates per row.
    positives: [num_queries, max_positives] int64 corpus rows of the judged positives (relevance
      > 0), -1 padded; kept so the random fallback of `sample_negatives` can avoid them.
    num_docs: corpus size, the range of the random fallback.
  """
  query_ids: list[str]
  candidates: np.ndarray
  counts: np.ndarray
  positives: np.ndarray
  num_docs: int


def _pad(rows: list[np.ndarray], width: int) -> np.ndarray:
  out = np.full((len(rows), width), -1, np.int64)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r[:width]
  return out


def empty_pool(data: BeirData) -> NegativePool:
  """A pool of no candidates with `data`'s queries, positives and corpus size (what a pool
  mined elsewhere is checked against, `recipes.ance_refresh.pool_from_host`)."""
  positives = data.positive_rows()
  most = max((len(p) for p in positives), default=0)
  return NegativePool(query_ids=list(data.query_ids),
                      candidates=np.zeros((len(positives), 0), np.int64),
                      counts=np.zeros(len(positives), np.int64),
                      positives=_pad(positives, max(most, 1)), num_docs=len(data.corpus_ids))


def bm25_negative_pool(data: BeirData, depth: int = 100, *, k1: float = 0.9, b: float = 0.4,
                       index: BM25Index | None = None) -> NegativePool:
  """Mines BM25 candidate negatives for every query of a (training) split.

  Judged-zero documents are not positives and are kept as candidates.

  Args:
    data: the split; its whole corpus is searched.
    depth: candidates kept per query. The search goes `depth` + (most positives of any query)
      deep, so that `depth` negatives remain after the positives are removed where the query
      matches enough documents.
    k1: BM25 term-frequency saturation, used only when `index` is None.
    b: BM25 length normalisation, used only when `index` is None.
    index: a prebuilt index over `data.doc_strings()`, to skip building one.

  Returns:
    The pool, rows in `data.query_ids` order.

  Raises:
    ValueError: depth < 1, or `index` does not cover the corpus.
  """
  if depth < 1:
    raise ValueError(f"depth must be at least 1, got {depth}")
  num_docs = len(data.corpus_ids)
  if index is None:
    index = BM25Index.build(data.doc_strings(), k1=k1, b=b)
  elif index.num_docs != num_docs:
    raise ValueError(f"index holds {index.num_docs} documents but the corpus has {num_docs}")
  positives = data.positive_rows()
  k = _search_depth(depth, positives, num_docs)
  if data.query_ids:
    _, found = index.search(data.query_texts, k)
  else:
    found = np.zeros((0, k), np.int64)
  return _pool_from_ranking(data, found, positives, depth)


def _search_depth(depth: int, positives: list[np.ndarray], num_docs: int) -> int:
  """How deep to search so that `depth` candidates remain after removing the positives."""
  return min(depth + max((len(p) for p in positives), default=0), num_docs)


def _pool_from_ranking(data: BeirData, found: np.ndarray, positives: list[np.ndarray],
                       depth: int, dropped: np.ndarray | None = None) -> NegativePool:
  """The pool of ranked rows `found` [queries, k] minus positives (and `dropped` slots)."""
  kept = []
  for q, (row, pos) in enumerate(zip(found, positives)):
    keep = (row >= 0) & ~np.isin(row, pos)
    if dropped is not None:
      keep &= ~dropped[q]
    kept.append(row[keep][:depth])
  most_positives = max((len(p) for p in positives), default=0)
  return NegativePool(query_ids=list(data.query_ids), candidates=_pad(kept, depth),
                      counts=np.array([len(r) for r in kept], np.int64),
                      positives=_pad(positives, max(most_positives, 1)),
                      num_docs=len(data.corpus_ids))


def dense_negative_pool(query_emb: np.ndarray, corpus_emb: np.ndarray, data: BeirData,
                        depth: int = 200, *, index: str = "scann",
                        scann_config: ScannConfig | None = None,
                        false_negative_margin: float | None = None,
                        passage_doc: np.ndarray | None = None,
                        shard: tuple[int, int] | None = None) -> NegativePool:
  """Mines negatives from the whole corpus with a dense model (ANCE's ANN negatives).

  `shard_candidates` then `pool_from_shards`. On several processes each passes its shard of
  the corpus (`encode.encode_document_shard`): the shards are searched where they are and the
  top lists merged (`index.sharded`), so every process returns the same pool; this is then a
  collective.

  Args:
    query_emb: [num_queries, d] embeddings of `data.query_ids`, in that order (all queries,
      on every process).
    corpus_emb: [rows, d] embeddings of the documents `shard` (default all of
      `data.corpus_ids`); with `passage_doc`, embeddings of those documents' passages (MaxP).
    data: the training split (its judgements define the positives).
    depth: candidates kept per query after removing positives (ANCE: 200).
    index: `scann` (approximate, as ANCE's ANN index) or `exact` (JAX top-k).
    scann_config: ScaNN settings for index='scann'.
    false_negative_margin: if set, also drop candidates scoring above the query's best positive
      minus this margin: unjudged documents the model already ranks like a positive are likely
      relevant (false negatives). None keeps them, as ANCE does.
    passage_doc: MaxP: [rows] int64, the corpus document row of each row of `corpus_emb`
      (from `data.passages.split_documents`); a document scores the max over its passages.
    shard: [start, stop) document rows `corpus_emb` covers; default the whole corpus.

  Returns:
    The pool, rows in `data.query_ids` order, candidates best-scored first.

  Raises:
    ValueError: mismatched shapes, depth < 1 or an unknown index.
  """
  found = shard_candidates(query_emb, corpus_emb, data, depth, index=index,
                           scann_config=scann_config, passage_doc=passage_doc, shard=shard,
                           with_positive_scores=false_negative_margin is not None)
  return pool_from_shards(found, data, depth, false_negative_margin)


@dataclasses.dataclass(frozen=True)
class ShardCandidates:
  """One process's dense candidates from its shard of the corpus (`shard_candidates`).

  Attributes:
    scores: [num_queries, k'] float32, best first.
    rows: [num_queries, k'] int64 corpus document rows, -1 for an empty slot.
    best_positive: [num_queries] float32, each query's best score over the positives this
      shard holds (-inf: none here), for the false-negative margin; None if not asked for.
    depth: The depth every shard searched to (the merged list's length).
  """
  scores: np.ndarray
  rows: np.ndarray
  best_positive: np.ndarray | None
  depth: int


def shard_candidates(query_emb: np.ndarray, corpus_emb: np.ndarray, data: BeirData,
                     depth: int = 200, *, index: str = "scann",
                     scann_config: ScannConfig | None = None,
                     passage_doc: np.ndarray | None = None,
                     shard: tuple[int, int] | None = None,
                     with_positive_scores: bool = False) -> ShardCandidates:
  """The search half of `dense_negative_pool` (same arguments): this process's shard only,
  no communication, so ANCE's background refresh thread can run it."""
  if depth < 1:
    raise ValueError(f"depth must be at least 1, got {depth}")
  if index not in ("scann", "exact"):
    raise ValueError(f"index must be 'scann' or 'exact', got {index!r}")
  query_emb = np.asarray(query_emb, np.float32)
  corpus_emb = np.asarray(corpus_emb, np.float32)
  num_docs = len(data.corpus_ids)
  start, stop = (0, num_docs) if shard is None else shard
  if passage_doc is None:
    passage_doc = np.arange(start, stop)
  passage_doc = np.asarray(passage_doc, np.int64)
  if (query_emb.shape[0] != len(data.query_ids) or corpus_emb.shape[0] != len(passage_doc)
      or not 0 <= start <= stop <= num_docs
      or (len(passage_doc) and (passage_doc.min() < start or passage_doc.max() >= stop))):
    raise ValueError(f"embeddings {query_emb.shape} / {corpus_emb.shape} do not match the "
                     f"{len(data.query_ids)} queries / documents [{start}, {stop}) of "
                     f"{num_docs} ({len(passage_doc)} passages)")
  positives = data.positive_rows()
  k = _search_depth(depth, positives, num_docs)
  local_doc = passage_doc - start
  # MaxP: deep enough in passages that k distinct documents are found when every document has
  # its full share of passages.
  per_doc = int(np.bincount(local_doc, minlength=1).max()) if len(local_doc) else 1
  folded = per_doc > 1 or len(local_doc) != stop - start
  searcher = (ScannIndex.build(corpus_emb, scann_config or ScannConfig())
              if index == "scann" and len(corpus_emb) else None)

  def search(queries, corpus, docs):
    passage_k = min(docs * per_doc, len(corpus))
    if searcher is None:
      scores, found = exact_search(queries, corpus, passage_k)
    else:
      scores, found = searcher.search(queries, passage_k)
    return maxp.max_over_passages(scores, found, local_doc, docs) if folded else (scores, found)

  scores, rows = sharded.search_local(query_emb, corpus_emb, start, k, search,
                                      shard_size=stop - start)
  best_positive = None
  if with_positive_scores:
    best_positive = np.full(len(positives), -np.inf, np.float32)
    for q, p in enumerate(positives):
      held = np.flatnonzero(np.isin(passage_doc, p))
      if len(held):
        best_positive[q] = np.max(corpus_emb[held] @ query_emb[q])
  return ShardCandidates(scores, rows, best_positive, k)


def pool_from_shards(found: ShardCandidates, data: BeirData, depth: int,
                     false_negative_margin: float | None = None) -> NegativePool:
  """The merge half of `dense_negative_pool`: every process's candidates merged into one
  ranking (a collective on several processes), positives (and near-positives) removed."""
  scores, rows = sharded.merge_across_processes(found.scores, found.rows, found.depth)
  dropped = None
  if false_negative_margin is not None:
    if found.best_positive is None:
      raise ValueError("false_negative_margin needs shard_candidates(with_positive_scores=True)")
    # Each process scored the positives it holds; the best over all processes counts.
    best = distributed.allgather_rows(found.best_positive[None]).max(axis=0)
    best[~np.isfinite(best)] = np.inf  # no positive embedded: drop nothing
    dropped = scores > (best - false_negative_margin)[:, None]
  return _pool_from_ranking(data, rows, data.positive_rows(), depth, dropped)


def _fill(rng: np.random.Generator, exclude: np.ndarray, num_docs: int, need: int) -> np.ndarray:
  """`need` distinct random rows of range(num_docs) not in `exclude`; the caller checks there are
  enough."""
  if 2 * len(exclude) >= num_docs:  # Small corpus: enumerate what is allowed.
    return rng.choice(np.setdiff1d(np.arange(num_docs), exclude), need, replace=False)
  # Large corpus: rejection sampling, far cheaper than materialising range(num_docs) per query.
  chosen = np.zeros(0, np.int64)
  while len(chosen) < need:
    draw = rng.integers(0, num_docs, 2 * need + 8)
    draw = draw[~np.isin(draw, exclude) & ~np.isin(draw, chosen)]
    _, first = np.unique(draw, return_index=True)
    chosen = np.concatenate([chosen, draw[np.sort(first)]])
  return chosen[:need]


def sample_negatives(pool: NegativePool, num_negatives: int, *, seed: int, epoch: int,
                     top_k: int | None = None) -> np.ndarray:
  """Draws hard negatives for one epoch.

  Each query gets `num_negatives` distinct rows sampled without replacement from its first
  `top_k` candidates. `top_k=1` with one negative is DPR's choice: the best-ranked non-positive,
  deterministically. A query with fewer candidates than `num_negatives` (few BM25 matches, or
  `top_k` small) gets all of them, then is filled with random corpus rows that are neither
  positives nor already chosen, so that every batch has the same shape.

  Args:
    pool: from `bm25_negative_pool` or `load_pool`.
    num_negatives: negatives per query, >= 1.
    seed: the run's seed, >= 0.
    epoch: the epoch, >= 0; the RNG is `np.random.default_rng([seed, epoch])`.
    top_k: sample among the best `top_k` candidates (None: all of the pool).

  Returns:
    [num_queries, num_negatives] int64 corpus rows, never a positive and never -1.

  Raises:
    ValueError: bad arguments, or a corpus too small to supply enough non-positives.
  """
  if num_negatives < 1:
    raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k must be at least 1 or None, got {top_k}")
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
  rng = np.random.default_rng([seed, epoch])
  width = pool.candidates.shape[1] if top_k is None else min(top_k, pool.candidates.shape[1])
  limit = np.minimum(pool.counts, width)
  # Uniform random keys, invalid slots last: the smallest keys are a uniform subset in random
  # order, drawn for all queries at once; a single valid slot (top_k=1) is picked for certain.
  keys = rng.random((len(pool.query_ids), width))
  keys[np.arange(width)[None, :] >= limit[:, None]] = np.inf
  taken = min(num_negatives, width)
  order = np.argsort(keys, axis=1, kind="stable")[:, :taken]
  out = np.full((len(pool.query_ids), num_negatives), -1, np.int64)
  out[:, :taken] = np.take_along_axis(pool.candidates[:, :width], order, axis=1)
  for q in np.flatnonzero(limit < num_negatives):
    have = out[q, :limit[q]]
    positives = pool.positives[q][pool.positives[q] >= 0]
    if pool.num_docs - len(positives) < num_negatives:
      raise ValueError(f"query {pool.query_ids[q]!r}: the corpus has only "
                       f"{pool.num_docs - len(positives)} non-positive documents, "
                       f"{num_negatives} negatives were asked for")
    exclude = np.union1d(positives, have)
    out[q, limit[q]:] = _fill(rng, exclude, pool.num_docs, num_negatives - limit[q])
  return out


def save_pool(path: str | os.PathLike, pool: NegativePool) -> None:
  """Writes a pool as .npz, local or remote (`gs://...`); `.npz` is appended if `path` lacks it.

  Written through an epath file object, which numpy takes as is: the suffix numpy appends to a
  path name is appended here.
  """
  path = epath.Path(path)
  if not path.name.endswith(".npz"):
    path = path.with_name(path.name + ".npz")
  with path.open("wb") as f:
    np.savez(f, query_ids=np.asarray(pool.query_ids, dtype=str), candidates=pool.candidates,
             counts=pool.counts, positives=pool.positives, num_docs=np.int64(pool.num_docs))


def load_pool(path: str | os.PathLike) -> NegativePool:
  """Reads a pool written by `save_pool`, local or remote."""
  with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as arrays:
    return NegativePool(query_ids=[str(q) for q in arrays["query_ids"]],
                        candidates=arrays["candidates"].astype(np.int64),
                        counts=arrays["counts"].astype(np.int64),
                        positives=arrays["positives"].astype(np.int64),
                        num_docs=int(arrays["num_docs"]))
