"""Run by tests/test_index_maxsim.py in every process: sharded MaxSim over a fixed corpus.

  python tests/mp_maxsim_worker.py OUT.npz --coordinator_address=... --num_processes=N
      --process_id=I

Each process indexes its contiguous shard of the same seeded documents (exhaustive ScaNN
settings) and runs `maxsim.search_sharded`; process 0 writes the merged lists (every process
checks they hold the same lists).
"""

import argparse
import sys

from retrieval_jax import distributed

DISTINCT = 90  # documents drawn at random
COPIES = 10  # then rows DISTINCT.. copy rows 0.., across the shard boundary: exact ties
K = 12
DEPTH = 5  # a moderate k', on the documents without copies


def corpus_and_queries():
  """(TokenStore of DISTINCT + COPIES documents, queries [9, 8, 16], query_mask [9, 8])."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from retrieval_jax.index.maxsim import TokenStore  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  padded = rng.standard_normal((DISTINCT, 35, 16))
  padded /= np.linalg.norm(padded, axis=-1, keepdims=True)
  mask = np.arange(35)[None, :] < rng.integers(15, 36, DISTINCT)[:, None]
  store = TokenStore.from_padded(padded, mask)
  store = TokenStore.concatenate([store, store.slice(0, COPIES)])
  queries = rng.standard_normal((9, 8, 16))
  queries = (queries / np.linalg.norm(queries, axis=-1, keepdims=True)).astype(np.float32)
  query_mask = np.ones((9, 8), np.int32)
  query_mask[2, 5:] = 0  # padding of a shorter query
  return store, queries, query_mask


def config(store):
  """ScaNN settings under which the token search of `store` is exact."""
  from retrieval_jax.index import ScannConfig  # pylint: disable=g-import-not-at-top

  return ScannConfig(num_leaves=8, num_leaves_to_search=8, reorder_k=max(1, store.num_tokens))


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

  from retrieval_jax.index import maxsim  # pylint: disable=g-import-not-at-top

  store, queries, query_mask = corpus_and_queries()
  result = {"processes": np.asarray(jax.process_count())}
  # "all": k' above every token, so every document is a candidate; "depth": a moderate k'.
  for name, corpus, depth in (("all", store, 10**6), ("depth", store.slice(0, DISTINCT), DEPTH)):
    start, stop = distributed.shard_range(corpus.num_docs, align=1)
    shard = corpus.slice(start, stop)
    index = maxsim.MaxSimIndex.build(shard, config(shard), doc_start=start)
    if name == "all":
      assert not index.token_index.brute_force
      result["shard_tokens"] = distributed.allgather_rows(np.asarray([shard.num_tokens]))
    # query_batch=4: several exchanges, the last one short.
    scores, rows = maxsim.search_sharded(index, queries, K, depth, query_mask, query_batch=4)
    result[f"{name}_scores"], result[f"{name}_rows"] = scores, rows
  for key in ("all_rows", "depth_rows", "all_scores", "depth_scores"):
    gathered = distributed.allgather_rows(result[key][None])
    assert all(np.array_equal(g, result[key]) for g in gathered), key
  if jax.process_index() == 0:
    np.savez(args.out, **result)


if __name__ == "__main__":
  main(sys.argv[1:])
