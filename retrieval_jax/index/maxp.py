"""MaxP: a document scores the max over its passages (ANCE, Xiong et al. 2020, 2007.00808).

The corpus is searched as passages (`retrieval_jax.data.passages.split_documents`), and each
query's ranked passages are folded into ranked documents here. Searching `k * max_passages`
passages deep is enough for the exact top-k documents: a document of the top k has at most
(k - 1) * max_passages passages of other documents above its best one, and none of its own.
"""

from __future__ import annotations

import numpy as np


def max_over_passages(scores: np.ndarray, passage_rows: np.ndarray, doc_of: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
  """Ranked documents from ranked passages, each document scored by its best passage.

  Args:
    scores: [num_queries, k'] passage scores, as returned by `exact_search` or
      `ScannIndex.search` (best first; the order only matters for ties).
    passage_rows: [num_queries, k'] passage rows; -1 (any negative row) means no result.
    doc_of: [num_passages] the document row of each passage.
    k: Documents to return per query.

  Returns:
    doc_scores: [num_queries, k] float32, each document's best passage score, decreasing.
    doc_rows: [num_queries, k] int64 document rows, each document at most once per query;
      among equal scores the document whose best passage came earlier in the passage ranking
      comes first (and a document's best passage is its earliest among equal scores). Slots
      past the number of distinct documents found hold row -1 and score -inf.

  Raises:
    ValueError: on shapes that disagree, k < 1, or a passage row outside doc_of.
  """
  scores = np.asarray(scores, np.float32)
  passage_rows = np.asarray(passage_rows)
  doc_of = np.asarray(doc_of)
  if scores.ndim != 2 or scores.shape != passage_rows.shape:
    raise ValueError(f"scores and passage_rows must both be [num_queries, k'], got "
                     f"{scores.shape} and {passage_rows.shape}")
  if doc_of.ndim != 1:
    raise ValueError(f"doc_of must be 1-D [num_passages], got shape {doc_of.shape}")
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}")
  if passage_rows.size and passage_rows.max() >= len(doc_of):
    raise ValueError(f"passage_rows holds row {passage_rows.max()} but doc_of has only "
                     f"{len(doc_of)} passages")
  num_queries, depth = scores.shape
  doc_scores = np.full((num_queries, k), -np.inf, np.float32)
  doc_rows = np.full((num_queries, k), -1, np.int64)
  if num_queries == 0 or depth == 0:
    return doc_scores, doc_rows
  # Rank each query's passages by score, ties by position (a stable sort of each row); in that
  # order a document's first passage is its best, and the documents are already ranked.
  order = np.argsort(-scores, axis=1, kind="stable")
  rows = np.take_along_axis(passage_rows, order, axis=1)
  ranked_scores = np.take_along_axis(scores, order, axis=1)
  found = rows >= 0
  docs = np.full(rows.shape, -1, np.int64)
  docs[found] = doc_of[rows[found]]
  # First passage of every (query, document): one stable sort of a combined key over all
  # entries keeps the ranked order inside each group, vectorised over every query at once.
  num_keys = int(docs.max()) + 2  # documents and "none" (-1 -> 0)
  keys = (np.arange(num_queries, dtype=np.int64)[:, None] * num_keys + docs + 1).reshape(-1)
  grouped = np.argsort(keys, kind="stable")
  first = np.ones(len(grouped), bool)
  first[1:] = keys[grouped[1:]] != keys[grouped[:-1]]
  best = np.zeros(keys.shape, bool)
  best[grouped[first]] = True
  best = best.reshape(num_queries, depth) & found
  rank = np.cumsum(best, axis=1) - 1
  keep = best & (rank < k)
  query = np.nonzero(keep)[0]
  doc_scores[query, rank[keep]] = ranked_scores[keep]
  doc_rows[query, rank[keep]] = docs[keep]
  return doc_scores, doc_rows
