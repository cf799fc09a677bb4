"""ColBERT late interaction (Khattab & Zaharia 2020, 2004.12832): MaxSim over token vectors.

A document is the set of its kept token vectors (punctuation and padding removed), stored
float16 in a `TokenStore`. The score of a query and a document is the sum over the query
positions of the best inner product with any document token:

  MaxSim(q, D) = sum_i max_j q_i . d_j      (unit vectors: cosine similarities)

Both of the paper's retrieval modes are here:

- re-ranking: `rerank` scores given candidate documents exactly (`brute_force` scores all of
  them, the reference);
- end-to-end: `MaxSimIndex` puts every document token into a ScaNN index, each query vector
  fetches its `token_depth` (k') nearest tokens, and the union of their documents is
  re-ranked with exact MaxSim from the float16 store.

Scores are computed in float64 and rounded to float32. Float32 BLAS gives a row of a matmul
a different last bit depending on where the row sits and on the matrix shapes (measured with
numpy's OpenBLAS), so a document would score differently in a different candidate set, a
different shard or `brute_force`; tied copies would then rank by noise. Products of float16
tokens and float32 queries are exact in float64, and the final rounding to float32 hides the
summation order. Results follow `exact_search`: best first, ties by the lower row, empty slots
(-inf, -1). An empty document (no kept tokens) scores -inf and is never returned.

On several processes each process holds one contiguous shard of the documents (for example
`distributed.shard_range(num_docs, align=1)`; MaxSim has no tile alignment to keep) in its own
`MaxSimIndex` with `doc_start`; `search_sharded` makes the token search global, so that the
candidate documents are those one index over the whole corpus would find with exact token
search. ScaNN is approximate, and a tree trained on a shard is not the tree of the whole
corpus: sharded and unsharded results are the same only with exhaustive settings (brute force
below 1,000 tokens per shard, or `num_leaves_to_search == num_leaves` with `reorder_k` at least
`token_depth` and the shard's tokens). Tokens with equal scores at the k' cut-off are kept lower
process first, which a single ScaNN searcher need not do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Callable, Sequence

import numpy as np

from retrieval_jax import distributed
from retrieval_jax import files
from retrieval_jax.index import sharded
from retrieval_jax.index.scann_index import ScannConfig
from retrieval_jax.index.scann_index import ScannIndex

# Float64 elements of one matmul's operands and result (gathered token vectors plus the
# [tokens, query positions] similarities): 2**22 is 32 MiB.
BLOCK_SIZE = 2**22
_SETTINGS_FILE = "maxsim.json"
_VECTORS_FILE = "token_vectors.npy"
_OFFSETS_FILE = "offsets.npy"
_SCANN_DIR = "scann"
_FORMAT = 1


@dataclasses.dataclass(frozen=True, eq=False)
class TokenStore:
  """The kept token vectors of every document, concatenated document by document.

  Attributes:
    vectors: float16 [num_tokens, dim]; may be memory-mapped.
    offsets: int64 [num_docs + 1]; document i is vectors[offsets[i]:offsets[i + 1]] (empty
      documents are allowed).
  """
  vectors: np.ndarray
  offsets: np.ndarray

  def __post_init__(self):
    vectors = self.vectors
    if not (isinstance(vectors, np.ndarray) and vectors.dtype == np.float16):
      vectors = np.asarray(vectors, np.float16)
    offsets = np.asarray(self.offsets)
    if vectors.ndim != 2:
      raise ValueError(f"vectors must be [num_tokens, dim], got shape {vectors.shape}")
    if offsets.ndim != 1 or len(offsets) == 0 or not np.issubdtype(offsets.dtype, np.integer):
      raise ValueError(f"offsets must be integers [num_docs + 1], got {offsets.dtype} "
                       f"{offsets.shape}")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != len(vectors) or np.any(np.diff(offsets) < 0):
      raise ValueError(f"offsets must be non-decreasing from 0 to num_tokens={len(vectors)}, "
                       f"got {offsets[0]} .. {offsets[-1]}, smallest step "
                       f"{np.diff(offsets).min(initial=0)}")
    object.__setattr__(self, "vectors", vectors)
    object.__setattr__(self, "offsets", offsets)

  @classmethod
  def from_padded(cls, vectors: np.ndarray, mask: np.ndarray) -> TokenStore:
    """The store of padded token vectors [num_docs, L, dim] without the positions where the
    [num_docs, L] mask is 0 (padding, and the punctuation ColBERT filters out)."""
    vectors, mask = np.asarray(vectors), np.asarray(mask)
    if vectors.ndim != 3 or mask.shape != vectors.shape[:2]:
      raise ValueError(f"expected vectors [num_docs, L, dim] and mask [num_docs, L], got "
                       f"{vectors.shape} and {mask.shape}")
    keep = mask != 0
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    return cls(vectors[keep].astype(np.float16), offsets)  # row-major: document by document

  @classmethod
  def concatenate(cls, stores: Sequence[TokenStore]) -> TokenStore:
    """The documents of `stores`, in order, as one store."""
    if not stores:
      raise ValueError("stores must hold at least one TokenStore")
    dims = {s.dim for s in stores}
    if len(dims) != 1:
      raise ValueError(f"stores must share one dim, got {sorted(dims)}")
    shifts = np.cumsum([0] + [s.num_tokens for s in stores[:-1]])
    offsets = np.concatenate([[0]] + [s.offsets[1:] + shift for s, shift in zip(stores, shifts)])
    return cls(np.concatenate([s.vectors for s in stores]), offsets)

  @property
  def num_docs(self) -> int:
    return len(self.offsets) - 1

  @property
  def num_tokens(self) -> int:
    return len(self.vectors)

  @property
  def dim(self) -> int:
    return self.vectors.shape[1]

  @property
  def nbytes(self) -> int:
    return self.vectors.nbytes + self.offsets.nbytes

  def lengths(self) -> np.ndarray:
    """int64 [num_docs] tokens per document."""
    return np.diff(self.offsets)

  def doc_of_token(self) -> np.ndarray:
    """int64 [num_tokens] the document of every token."""
    return np.repeat(np.arange(self.num_docs, dtype=np.int64), self.lengths())

  def slice(self, start: int, stop: int) -> TokenStore:
    """Documents [start, stop) as a store (vectors are a view, not a copy)."""
    if not 0 <= start <= stop <= self.num_docs:
      raise ValueError(f"need 0 <= start <= stop <= num_docs={self.num_docs}, got start={start}, "
                       f"stop={stop}")
    first, last = self.offsets[start], self.offsets[stop]
    return TokenStore(self.vectors[first:last], self.offsets[start:stop + 1] - first)


def _checked_queries(queries, query_mask, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """(queries float32 [nq, Lq, dim], mask bool [nq, Lq]) or a ValueError naming the argument."""
  queries = np.asarray(queries, np.float32)
  if queries.ndim != 3 or queries.shape[2] != dim:
    raise ValueError(f"queries must be [num_queries, Lq, {dim}], got shape {queries.shape}")
  if query_mask is None:
    return queries, np.ones(queries.shape[:2], bool)
  query_mask = np.asarray(query_mask)
  if query_mask.shape != queries.shape[:2]:
    raise ValueError(f"query_mask must be [num_queries, Lq] = {queries.shape[:2]}, got "
                     f"{query_mask.shape}")
  return queries, query_mask != 0


def _check_positive(name: str, value: int) -> None:
  if int(value) != value or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _doc_blocks(lengths: np.ndarray, budget: int) -> list[slice]:
  """Consecutive runs of documents of about `budget` tokens (a longer document alone)."""
  if len(lengths) == 0:
    return []
  before = np.cumsum(lengths) - lengths
  group = before // max(1, budget)
  cuts = np.flatnonzero(np.diff(group)) + 1
  bounds = np.concatenate([[0], cuts, [len(lengths)]])
  return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _token_rows(offsets: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(store rows of the tokens of `docs`, in order; position of each document's first one)."""
  starts = offsets[docs]
  lengths = offsets[docs + 1] - starts
  firsts = np.cumsum(lengths) - lengths
  rows = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - firsts, lengths)
  return rows, firsts


def _score_docs(store: TokenStore, docs: np.ndarray, positions: np.ndarray, counts: np.ndarray,
                block_size: int) -> np.ndarray:
  """MaxSim of query positions against documents.

  Args:
    store: The documents.
    docs: int64 [n] document rows (any order, repeats allowed).
    positions: float64 [P, dim] the kept query vectors of several queries, query by query.
    counts: int64 [nq] positions per query (sum P; 0 is allowed and scores 0).
    block_size: `BLOCK_SIZE`.

  Returns:
    float32 [n, nq]; -inf for empty documents.
  """
  num_positions = len(positions)
  lengths = store.offsets[docs + 1] - store.offsets[docs]
  has_positions = counts > 0
  query_starts = (np.cumsum(counts) - counts)[has_positions]
  out = np.zeros((len(docs), len(counts)), np.float32)
  for block in _doc_blocks(lengths, block_size // (num_positions + store.dim)):
    block_docs, block_lengths = docs[block], lengths[block]
    maxes = np.full((len(block_docs), num_positions), -np.inf)
    nonempty = block_lengths > 0
    if num_positions and nonempty.any():
      rows, firsts = _token_rows(store.offsets, block_docs)
      sims = store.vectors[rows].astype(np.float64) @ positions.T
      # reduceat over non-empty segments only: an empty one would take its successor's row.
      maxes[nonempty] = np.maximum.reduceat(sims, firsts[nonempty], axis=0)
    scores = np.zeros((len(block_docs), len(counts)))
    if num_positions:
      scores[:, has_positions] = np.add.reduceat(maxes, query_starts, axis=1)
    scores[~nonempty] = -np.inf
    out[block] = scores
  return out


def _positions(queries: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(kept query vectors float64 [P, dim] query by query, int64 [nq] counts)."""
  return queries[mask].astype(np.float64), mask.sum(axis=1).astype(np.int64)


def maxsim_scores(queries: np.ndarray, store: TokenStore, doc_rows: np.ndarray,
                  query_mask: np.ndarray | None = None, *,
                  block_size: int = BLOCK_SIZE) -> np.ndarray:
  """MaxSim of every query with every document of `doc_rows`.

  Args:
    queries: float32 [num_queries, Lq, dim] query token vectors.
    store: The documents.
    doc_rows: int [n] document rows of `store`.
    query_mask: [num_queries, Lq], 0 where a position is padding (default: all kept). ColBERT's
      [MASK] augmentation positions are real query positions: keep them.
    block_size: float64 elements per matmul (memory bound, see `BLOCK_SIZE`).

  Returns:
    float32 [num_queries, n]; -inf for empty documents.
  """
  queries, mask = _checked_queries(queries, query_mask, store.dim)
  doc_rows = np.asarray(doc_rows)
  if doc_rows.ndim != 1 or not np.issubdtype(doc_rows.dtype, np.integer) or (
      doc_rows.size and (doc_rows.min() < 0 or doc_rows.max() >= store.num_docs)):
    raise ValueError(f"doc_rows must be 1-D rows in [0, {store.num_docs}), got {doc_rows.dtype} "
                     f"{doc_rows.shape}")
  doc_rows = doc_rows.astype(np.int64)
  out = np.zeros((len(queries), len(doc_rows)), np.float32)
  # Whole queries per batch, with at most block_size / 1024 positions, so that a block holds
  # about 1,000 tokens or more.
  per_batch = max(1, block_size // 1024 // max(1, queries.shape[1]))
  for start in range(0, len(queries), per_batch):
    positions, counts = _positions(queries[start:start + per_batch], mask[start:start + per_batch])
    out[start:start + per_batch] = _score_docs(store, doc_rows, positions, counts, block_size).T
  return out


def _top_k_of_docs(scores: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The best k of ascending `docs` with `scores` (1-D), padded with (-inf, -1)."""
  order = np.argsort(-scores, kind="stable")[:k]  # docs ascend: ties go to the lower row
  top_scores = np.full(k, -np.inf, np.float32)
  top_rows = np.full(k, -1, np.int64)
  top_scores[:len(order)] = scores[order]
  top_rows[:len(order)] = np.where(np.isfinite(scores[order]), docs[order], -1)
  return top_scores, top_rows


def rerank(queries: np.ndarray, store: TokenStore, candidates: np.ndarray, k: int,
           query_mask: np.ndarray | None = None, *,
           block_size: int = BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """The k best candidate documents of each query by exact MaxSim.

  Args:
    queries: float32 [num_queries, Lq, dim].
    store: The documents.
    candidates: int [num_queries, c] document rows of `store`; negative = empty slot; a
      document listed several times is scored once.
    k: Results per query (more than the candidates is fine: the rest are empty slots).
    query_mask: [num_queries, Lq], 0 on padding positions (see `maxsim_scores`).
    block_size: float64 elements per matmul (see `BLOCK_SIZE`).

  Returns:
    (scores float32 [num_queries, k], rows int64 [num_queries, k]) best first, ties by the
    lower row, empty slots (and empty documents) as (-inf, -1).
  """
  queries, mask = _checked_queries(queries, query_mask, store.dim)
  _check_positive("k", k)
  candidates = np.asarray(candidates)
  if candidates.ndim != 2 or len(candidates) != len(queries) or not (
      np.issubdtype(candidates.dtype, np.integer)):
    raise ValueError(f"candidates must be integer rows [num_queries={len(queries)}, c], got "
                     f"{candidates.dtype} {candidates.shape}")
  if candidates.size and candidates.max() >= store.num_docs:
    raise ValueError(f"candidates holds row {candidates.max()} but the store has only "
                     f"{store.num_docs} documents")
  scores = np.full((len(queries), k), -np.inf, np.float32)
  rows = np.full((len(queries), k), -1, np.int64)
  for i, row in enumerate(candidates):
    docs = np.unique(row[row >= 0]).astype(np.int64)  # sorted: the tie-break
    positions, counts = _positions(queries[i:i + 1], mask[i:i + 1])
    doc_scores = _score_docs(store, docs, positions, counts, block_size)[:, 0]
    scores[i], rows[i] = _top_k_of_docs(doc_scores, docs, k)
  return scores, rows


def brute_force(queries: np.ndarray, store: TokenStore, k: int,
                query_mask: np.ndarray | None = None, *,
                block_size: int = BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """Exact MaxSim top-k over every document (the reference); arguments and results as `rerank`."""
  queries, mask = _checked_queries(queries, query_mask, store.dim)
  _check_positive("k", k)
  top = (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
  per_chunk = max(1, block_size // max(1, len(queries)))  # bounds the [nq, docs] score matrix
  for start in range(0, store.num_docs, per_chunk):
    docs = np.arange(start, min(start + per_chunk, store.num_docs), dtype=np.int64)
    chunk = maxsim_scores(queries, store, docs, mask, block_size=block_size)
    chunk_top = [_top_k_of_docs(s, docs, k) for s in chunk]
    # The running list holds lower rows, so it goes first for the tie-break.
    top = sharded.merge_topk(np.stack([top[0], np.stack([s for s, _ in chunk_top])]),
                             np.stack([top[1], np.stack([r for _, r in chunk_top])]), k)
  return top


Merge = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class MaxSimIndex:
  """End-to-end ColBERT retrieval over one shard of documents: ScaNN over tokens, then MaxSim."""

  def __init__(self, store: TokenStore, token_index: ScannIndex | None, doc_start: int = 0):
    """Wraps a store and the ScaNN index of its tokens (None only for a store without tokens)."""
    if int(doc_start) != doc_start or doc_start < 0:
      raise ValueError(f"doc_start must be a non-negative integer, got {doc_start!r}")
    if (token_index is None) != (store.num_tokens == 0) or (
        token_index is not None and token_index.num_docs != store.num_tokens):
      raise ValueError(f"token_index must index the store's {store.num_tokens} tokens")
    self.store = store
    self.token_index = token_index
    self.doc_start = int(doc_start)
    self._scann_bytes: int | None = None

  @classmethod
  def build(cls, store: TokenStore, scann_config: ScannConfig = ScannConfig(),
            doc_start: int = 0) -> MaxSimIndex:
    """Indexes every token of `store` (ScaNN brute force below 1,000 tokens); `doc_start` is the
    corpus row of the store's first document."""
    token_index = ScannIndex.build(store.vectors, scann_config) if store.num_tokens else None
    return cls(store, token_index, doc_start)

  @property
  def num_docs(self) -> int:
    return self.store.num_docs

  @property
  def num_tokens(self) -> int:
    return self.store.num_tokens

  def search_tokens(self, queries: np.ndarray, token_depth: int,
                    query_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The shard's `token_depth` best tokens of every query vector, as documents.

    Args:
      queries: float32 [num_queries, Lq, dim].
      token_depth: k', tokens per query vector; capped at the shard's tokens.
      query_mask: [num_queries, Lq], 0 on padding positions: they search nothing.

    Returns:
      (token scores float32 [num_queries * Lq, d], corpus document rows int64 of those tokens
      [num_queries * Lq, d]), d = min(token_depth, num_tokens); (-inf, -1) where empty.
    """
    queries, mask = _checked_queries(queries, query_mask, self.store.dim)
    _check_positive("token_depth", token_depth)
    depth = min(token_depth, self.num_tokens)
    flat, keep = queries.reshape(-1, self.store.dim), mask.reshape(-1)
    scores = np.full((len(flat), depth), -np.inf, np.float32)
    docs = np.full((len(flat), depth), -1, np.int64)
    if depth and keep.any():
      found_scores, tokens = self.token_index.search(flat[keep], depth)
      # side="right" skips empty documents, whose offsets repeat the next one's.
      found_docs = np.searchsorted(self.store.offsets, tokens, side="right") - 1 + self.doc_start
      scores[keep], docs[keep] = found_scores, np.where(tokens >= 0, found_docs, -1)
    return scores, docs

  def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int,
             query_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`rerank` of the candidates in this shard; candidates and results are corpus rows, and
    candidates of other shards are ignored."""
    local = np.asarray(candidates, np.int64) - self.doc_start
    local = np.where((local >= 0) & (local < self.num_docs), local, -1)
    scores, rows = rerank(queries, self.store, local, k, query_mask)
    return scores, np.where(rows >= 0, rows + self.doc_start, -1)

  def search(self, queries: np.ndarray, k: int, token_depth: int,
             query_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ColBERT end-to-end retrieval in this shard alone.

    Args:
      queries: float32 [num_queries, Lq, dim] (all Lq positions, [MASK] augmentation included).
      k: Documents per query.
      token_depth: k', nearest tokens fetched per query vector.
      query_mask: [num_queries, Lq], 0 on padding positions.

    Returns:
      (scores float32 [num_queries, k], corpus rows int64 [num_queries, k]) as `rerank`.
    """
    return _search(self, queries, k, token_depth, query_mask, merge=None)

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the store (.npy), the settings (JSON) and ScaNN's files (in `scann/`); the
    directory may be remote (`gs://`)."""
    settings = {"format": _FORMAT, "doc_start": self.doc_start, "num_docs": self.num_docs,
                "num_tokens": self.num_tokens, "dim": self.store.dim,
                "scann": self.token_index is not None}
    with files.writing_dir(directory) as local:  # numpy and ScaNN write local files
      np.save(local / _VECTORS_FILE, self.store.vectors)
      np.save(local / _OFFSETS_FILE, self.store.offsets)
      if self.token_index is not None:
        self.token_index.save(local / _SCANN_DIR)
      (local / _SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")

  @classmethod
  def load(cls, directory: str | os.PathLike, *, mmap: bool = False) -> MaxSimIndex:
    """Reads an index written by `save`; `mmap` memory-maps the token vectors."""
    local = files.local_copy(directory)
    settings = json.loads((local / _SETTINGS_FILE).read_text(encoding="utf-8"))
    if settings.get("format") != _FORMAT:
      raise ValueError(f"{directory} holds MaxSim index format {settings.get('format')!r}, "
                       f"expected {_FORMAT}")
    store = TokenStore(np.load(local / _VECTORS_FILE, mmap_mode="r" if mmap else None),
                       np.load(local / _OFFSETS_FILE))
    token_index = ScannIndex.load(local / _SCANN_DIR) if settings["scann"] else None
    index = cls(store, token_index, settings["doc_start"])
    if token_index is not None:
      index._scann_bytes = _directory_bytes(local / _SCANN_DIR)
    return index

  def memory(self) -> dict[str, float]:
    """What the index holds, in bytes.

    `scann_bytes` is the size of the files `ScannIndex.save` writes (measured once, by saving
    to a temporary directory unless the index was loaded): ScaNN's float32 copy of the tokens
    for reordering, its hashed codes, tree and partition lists. It stands for ScaNN's resident
    memory, which ScaNN does not report. `bytes_per_token` and `bytes_per_document` divide the
    total (store plus ScaNN) by the tokens and the documents.
    """
    if self._scann_bytes is None:
      self._scann_bytes = 0
      if self.token_index is not None:
        with tempfile.TemporaryDirectory(prefix="retrieval_jax_maxsim_") as scratch:
          self.token_index.save(scratch)
          self._scann_bytes = _directory_bytes(pathlib.Path(scratch))
    total = self.store.nbytes + self._scann_bytes
    return {"token_vectors_bytes": self.store.vectors.nbytes,
            "offsets_bytes": self.store.offsets.nbytes, "scann_bytes": self._scann_bytes,
            "total_bytes": total, "bytes_per_token": total / max(1, self.num_tokens),
            "bytes_per_document": total / max(1, self.num_docs), "num_tokens": self.num_tokens,
            "num_docs": self.num_docs}


def _directory_bytes(directory: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _search(index: MaxSimIndex, queries, k: int, token_depth: int, query_mask,
            merge: Merge | None, total_tokens: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Token search, optional merge of the token lists (to at most `total_tokens`, the tokens
  of all shards), re-ranking, optional merge of the top-k lists; with merge=None (or one
  process) nothing is exchanged."""
  _check_positive("k", k)
  scores, docs = index.search_tokens(queries, token_depth, query_mask)
  if merge is not None:
    scores, docs = merge(scores, docs, min(token_depth, total_tokens))
  num_queries, query_length = np.shape(queries)[:2]
  candidates = docs.reshape(num_queries, query_length * docs.shape[1])
  scores, rows = index.rerank(queries, candidates, k, query_mask)
  if merge is not None:
    scores, rows = merge(scores, rows, k)
  return scores, rows


def search_sharded(index: MaxSimIndex, queries: np.ndarray, k: int, token_depth: int,
                   query_mask: np.ndarray | None = None, *,
                   query_batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """End-to-end retrieval over every process's shard (a collective; one process: `search`).

  Every process passes the same queries. The shards' token lists of each query vector are
  merged into the global top k' (scores with the corpus rows of their documents), every
  process re-ranks the candidates that fall in its shard, and the top-k lists are merged.

  Args:
    index: This process's shard, with its `doc_start`.
    queries, k, token_depth, query_mask: as `MaxSimIndex.search`.
    query_batch: Queries per exchange; bounds the gathered token lists
      (processes x query_batch x Lq x k' entries).

  Returns:
    (scores float32 [num_queries, k], corpus rows int64 [num_queries, k]), the same on every
    process.
  """
  _check_positive("query_batch", query_batch)
  _check_positive("k", k)
  _check_positive("token_depth", token_depth)
  queries = np.asarray(queries, np.float32)
  mask = None if query_mask is None else np.asarray(query_mask)
  # The merged token lists need not be wider than every shard's tokens together.
  total_tokens = int(distributed.allgather_rows(np.asarray([index.num_tokens], np.int64)).sum())
  parts = [_search(index, queries[s:s + query_batch], k, token_depth,
                   None if mask is None else mask[s:s + query_batch],
                   merge=sharded.merge_across_processes, total_tokens=total_tokens)
           for s in range(0, len(queries), query_batch)]
  if not parts:
    _checked_queries(queries, mask, index.store.dim)
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  return np.concatenate([s for s, _ in parts]), np.concatenate([r for _, r in parts])
