"""Search a corpus split over processes: each searches its shard, the top-k lists are merged.

On several hosts every process holds one contiguous shard of the corpus embeddings
(`distributed.shard_range`) and all the queries. `search_shards` runs any local search
(exact top-k, ScaNN, MaxP folding) on the shard, turns shard rows into corpus rows, gathers
every shard's list on every process and keeps the global top k. With one process it is the
local search itself.

The merge keeps the single-process tie-break: candidates are listed shard by shard, i.e. in
increasing corpus row, and sorted stably by score, so among equal scores the lower row wins,
as in `exact_search`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from retrieval_jax import distributed

# (queries, shard embeddings, k) -> (scores, shard rows), both [num_queries, k], rows -1 for
# an empty slot. k never exceeds what the shard can return.
LocalSearch = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def merge_topk(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The best k of several shards' lists.

  Args:
    scores: [num_shards, num_queries, k'] float scores, each shard's list best first.
    rows: [num_shards, num_queries, k'] corpus rows (global), -1 for an empty slot.
    k: Results to keep per query.

  Returns:
    (scores [num_queries, k] float32, rows [num_queries, k] int64), best first; among equal
    scores the earlier shard (the lower row) first; empty slots last as (-inf, -1).
  """
  scores = np.asarray(scores, np.float32)
  rows = np.asarray(rows, np.int64)
  if scores.shape != rows.shape or scores.ndim != 3:
    raise ValueError(f"scores and rows must both be [shards, queries, k'], got {scores.shape} "
                     f"and {rows.shape}")
  num_shards, num_queries, width = scores.shape
  flat_scores = np.where(rows >= 0, scores, -np.inf).transpose(1, 0, 2).reshape(
      num_queries, num_shards * width)
  flat_rows = rows.transpose(1, 0, 2).reshape(num_queries, num_shards * width)
  order = np.argsort(-flat_scores, axis=1, kind="stable")[:, :k]
  top_scores = np.take_along_axis(flat_scores, order, axis=1)
  top_rows = np.where(np.isfinite(top_scores), np.take_along_axis(flat_rows, order, axis=1), -1)
  if top_scores.shape[1] < k:  # fewer candidates than k in all shards together
    pad = k - top_scores.shape[1]
    top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    top_rows = np.pad(top_rows, ((0, 0), (0, pad)), constant_values=-1)
  return top_scores.astype(np.float32), top_rows.astype(np.int64)


def _padded(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  pad = k - scores.shape[1]
  if pad <= 0:
    return scores, rows
  return (np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf),
          np.pad(rows, ((0, 0), (0, pad)), constant_values=-1))


def search_shards(queries: np.ndarray, shard: np.ndarray, shard_start: int, k: int,
                  search: LocalSearch, *, shard_size: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The global top-k over every process's shard (a collective on several processes).

  Args:
    queries: [num_queries, dim], the same on every process.
    shard: This process's [rows, dim] embeddings (may be empty).
    shard_start: The corpus row of the shard's first result row (documents for MaxP).
    k: Results per query.
    search: The local search; called with k capped at `shard_size`.
    shard_size: How many distinct results the shard can give (its documents for MaxP);
      default its rows.

  Returns:
    (scores [num_queries, k] float32, rows [num_queries, k] int64 corpus rows).
  """
  return merge_across_processes(*search_local(queries, shard, shard_start, k, search,
                                              shard_size=shard_size), k)


def search_local(queries: np.ndarray, shard: np.ndarray, shard_start: int, k: int,
                 search: LocalSearch, *, shard_size: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """This process's part of `search_shards`, without communication (any thread may run it):
  (scores, corpus rows) of its shard's best min(k, shard_size) results."""
  shard_size = len(shard) if shard_size is None else shard_size
  local_k = min(k, shard_size)
  if local_k == 0:
    return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
  scores, rows = search(queries, shard, local_k)
  rows = np.asarray(rows, np.int64)
  return np.asarray(scores, np.float32), np.where(rows >= 0, rows + shard_start, -1)


def merge_across_processes(scores: np.ndarray, rows: np.ndarray,
                           k: int) -> tuple[np.ndarray, np.ndarray]:
  """Every process's `search_local` lists merged into the global top k, on every process (a
  collective; one process: its lists unchanged)."""
  if not distributed.is_multiprocess():
    return scores, rows
  scores, rows = _padded(scores, rows, k)
  all_scores = distributed.allgather_rows(scores[None])
  all_rows = distributed.allgather_rows(rows[None])
  return merge_topk(all_scores, all_rows, k)
