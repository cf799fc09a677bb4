"""Search over a corpus: exact (JAX), approximate (ScaNN) and lexical (BM25).

Every index returns `(scores, indices)`, both [num_queries, k], scores float32 decreasing and
indices int64 corpus rows; a slot with no result holds index -1 and score -inf.
"""

from retrieval_jax.index.bm25 import BM25Index
from retrieval_jax.index.exact import default_mesh
from retrieval_jax.index.exact import exact_search
from retrieval_jax.index.maxsim import MaxSimIndex, TokenStore
from retrieval_jax.index.scann_index import ScannConfig
from retrieval_jax.index.scann_index import ScannIndex

__all__ = ["BM25Index", "MaxSimIndex", "ScannConfig", "ScannIndex", "TokenStore", "default_mesh",
           "exact_search"]
