"""Run by tests/test_multiprocess.py in every process: sharded search over a fixed corpus.

  python tests/mp_search_worker.py OUT.npz --coordinator_address=... --num_processes=N
      --process_id=I

Each process searches its shard of the same seeded corpus (exact, ScaNN and MaxP) and the
merged top-k lists are written by process 0 (every process checks they hold the same lists).
"""

import argparse
import sys

from retrieval_jax import distributed


def corpus_and_queries():
  """A seeded corpus with tied rows (copies), queries, and passages grouped into documents."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  corpus = rng.normal(size=(700, 16)).astype(np.float32)
  corpus[650:] = corpus[:50]                   # exact ties across the shard boundary
  queries = rng.normal(size=(37, 16)).astype(np.float32)
  doc_of = np.sort(rng.integers(0, 300, size=700))  # MaxP: passages of 300 documents
  return corpus, queries, doc_of


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args(argv)
  distributed.maybe_initialize("false", coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from retrieval_jax.index import ScannConfig, ScannIndex, exact_search  # pylint: disable=g-import-not-at-top
  from retrieval_jax.index import maxp, sharded  # pylint: disable=g-import-not-at-top

  corpus, queries, doc_of = corpus_and_queries()
  k = 20
  start, stop = distributed.shard_range(len(corpus))
  shard = corpus[start:stop]
  exact = sharded.search_shards(queries, shard, start, k,
                                lambda q, c, n: exact_search(q, c, n))
  # Under 1,000 vectors ScaNN searches by brute force (scored like exact search).
  index = ScannIndex.build(shard, ScannConfig()) if len(shard) else None
  scann = sharded.search_shards(queries, shard, start, k, lambda q, _, n: index.search(q, n))
  # MaxP: documents are sharded, each process folds its passages into its documents.
  num_docs = int(doc_of.max()) + 1
  doc_start, doc_stop = distributed.shard_range(num_docs)
  per_doc = int(np.bincount(doc_of).max())  # k * per_doc passages hold the top-k documents
  rows = np.flatnonzero((doc_of >= doc_start) & (doc_of < doc_stop))
  local_doc_of = doc_of[rows] - doc_start

  def maxp_search(q, passages, n):
    scores, found = exact_search(q, passages, min(n * per_doc, len(passages)))
    return maxp.max_over_passages(scores, found, local_doc_of, n)

  by_doc = sharded.search_shards(queries, corpus[rows], doc_start, k, maxp_search,
                                 shard_size=doc_stop - doc_start)
  result = dict(exact_scores=exact[0], exact_rows=exact[1], scann_scores=scann[0],
                scann_rows=scann[1], maxp_scores=by_doc[0], maxp_rows=by_doc[1],
                shard=np.asarray([start, stop]), processes=np.asarray(jax.process_count()))
  # Every process must hold the same merged lists.
  for key in ("exact_rows", "scann_rows", "maxp_rows"):
    gathered = distributed.allgather_rows(result[key][None])
    assert all(np.array_equal(g, result[key]) for g in gathered), key
  if jax.process_index() == 0:
    np.savez(args.out, **result)


if __name__ == "__main__":
  main(sys.argv[1:])
