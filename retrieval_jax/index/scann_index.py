"""Approximate inner-product search with ScaNN: a k-means tree, anisotropic hashing, reordering.

`ScannIndex.build` trains a searcher on a corpus of embeddings, `search` returns the top-k like
`exact_search` does, and `save` / `load` keep the searcher in ScaNN's own format with the config as
JSON beside it.

The defaults aim at recall@10 >= 0.95 against exact search on sentence-embedding corpora (asserted
in tests/test_index_scann.py on clustered synthetic data; SciFact figures in WORKSPACE); lower
num_leaves_to_search for speed when that is not needed. ScaNN's own rule
of thumb is brute force below 20k points and no tree below 100k: for small corpora `exact_search`
is as fast.

Threads and reproducibility. `build` hands ScaNN's trainer this process's usable cores
(`set_n_training_threads`; ScaNN's own default counts every CPU of the host, whatever the
affinity); `search` runs its batch on ScaNN's query thread pool, or on the calling thread with
`parallel=False`. Builds are not reproducible, and the training thread count is not why: builds
of the same embeddings in fresh processes, with one training thread or several, give different
tree partitions and hashing codebooks (different serialized files, different neighbours) at the
same recall (tests/test_bench_index.py asserts both). The outcome follows memory addresses: in
one process later builds often repeat one another, and with address-space randomisation off
fresh processes mostly repeat too. So fixing one training thread buys nothing, and anything
that compares two builds must compare recall, not result lists.
"""

import dataclasses
import json
import logging
import math
import os

import numpy as np
from scann.scann_ops.py import scann_ops_pybind

_CONFIG_FILE = "retrieval_jax_scann.json"
# Below this many embeddings the tree and the hashing codebooks have too little to train on (a leaf
# of a sqrt(n)-leaf tree holds a handful of points), while brute force over them costs nothing.
MIN_DOCS_FOR_TREE = 1000
# The default search scores at least this many embeddings (see auto_leaves_to_search).
MIN_POINTS_SCORED = 2000
_DISTANCES = ("dot_product", "squared_l2")

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScannConfig:
  """How to build a ScaNN searcher; None means "derived from the corpus size".

  Attributes:
    num_leaves: k-means tree leaves; None: round(sqrt(num_docs)).
    num_leaves_to_search: leaves scored per query; None: `auto_leaves_to_search`.
    training_sample_size: embeddings used to train the tree and the codebooks; None: all of them,
      up to 250,000.
    dimensions_per_block: dimensions per anisotropic-hashing code (2 is ScaNN's recommendation).
    anisotropic_quantization_threshold: the inner-product threshold T of the anisotropic
      (score-aware) quantization loss; 0.2 is ScaNN's recommendation for unit-norm embeddings.
    reorder_k: candidates rescored exactly before the final top-k (raised to k when k is larger);
      0: no rescoring, the hashed scores are final and ScaNN keeps no float32 copy of the
      embeddings (an eighth of the memory at 128 dimensions): for candidate generation that
      is re-scored anyway (ColBERT's token search, `index.maxsim`).
    distance: 'dot_product' (scores are inner products) or 'squared_l2' (scores are negated squared
      distances, so that higher is better in both cases).
    spherical: train the tree on the sphere (cosine k-means); None: when the embeddings are
      unit-norm, which makes a large difference to recall for normalized embeddings.
    soar_lambda: SOAR spilling (each embedding also goes to a second, "orthogonal" leaf), which
      ScaNN recommends for new indices: more recall at a given number of leaves searched
      (WORKSPACE). None turns it off (half the partition memory). ScaNN has SOAR for dot products
      only, so it is not used with squared_l2.
    soar_overretrieve_factor: ScaNN's SOAR search over-retrieval, with its recommended 2.0.
  """
  num_leaves: int | None = None
  num_leaves_to_search: int | None = None
  training_sample_size: int | None = None
  dimensions_per_block: int = 2
  anisotropic_quantization_threshold: float = 0.2
  reorder_k: int = 100
  distance: str = "dot_product"
  spherical: bool | None = None
  soar_lambda: float | None = 1.5
  soar_overretrieve_factor: float = 2.0


def auto_leaves_to_search(num_leaves: int, num_docs: int) -> int:
  """The default number of leaves searched per query.

  A quarter of the leaves, and at least enough leaves to score about MIN_POINTS_SCORED embeddings:
  on small corpora small leaves cut neighbourhoods apart, and scoring a few thousand points is
  cheap. The recall this gives is measured in WORKSPACE ("ScaNN defaults").

  Args:
    num_leaves: leaves of the tree.
    num_docs: embeddings in the index.
  """
  by_points = math.ceil(MIN_POINTS_SCORED * num_leaves / num_docs)
  return max(1, min(num_leaves, max(math.ceil(num_leaves / 4), by_points)))


class ScannIndex:
  """A ScaNN searcher over a corpus of embeddings; build with `build`, or `load` a saved one."""

  def __init__(self, searcher, config: ScannConfig, *, num_docs: int, dim: int,
               num_leaves_to_search: int | None):
    """Wraps a built searcher; num_leaves_to_search None means brute force (no tree)."""
    self._searcher = searcher
    self.config = config
    self.num_docs = num_docs
    self.dim = dim
    self.num_leaves_to_search = num_leaves_to_search

  @property
  def brute_force(self) -> bool:
    return self.num_leaves_to_search is None

  @property
  def num_leaves(self) -> int | None:
    """Leaves of the tree (None for brute force), as `build` chose them."""
    if self.brute_force:
      return None
    return self.config.num_leaves or round(math.sqrt(self.num_docs))

  @classmethod
  def build(cls, embeddings: np.ndarray, config: ScannConfig = ScannConfig(), *,
            training_threads: int | None = None) -> "ScannIndex":
    """Trains a searcher on [num_docs, dim] embeddings (any float dtype; ScaNN works in float32).

    Corpora of fewer than MIN_DOCS_FOR_TREE embeddings get ScaNN's brute force (exact) instead of a
    tree and hashing, with a warning in the log.

    Args:
      embeddings: [num_docs, dim].
      config: How to build.
      training_threads: Threads ScaNN trains with; None: the cores this process may use.
        Builds are not reproducible with any thread count (see the module docstring).
    """
    if config.distance not in _DISTANCES:
      raise ValueError(f"distance must be one of {_DISTANCES}, got {config.distance!r}")
    threads = usable_cpus() if training_threads is None else training_threads
    if threads < 1:
      raise ValueError(f"training_threads must be at least 1, got {training_threads}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
      raise ValueError(
          f"expected [num_docs, dim] embeddings with num_docs >= 1, got {embeddings.shape}")
    num_docs, dim = embeddings.shape
    builder = scann_ops_pybind.builder(embeddings, min(10, num_docs), config.distance)
    builder.set_n_training_threads(threads)
    if num_docs < MIN_DOCS_FOR_TREE:
      _log.warning("ScaNN: %d embeddings are too few to train a tree and hashing codebooks (fewer "
                   "than %d); building an exact brute-force searcher instead.", num_docs,
                   MIN_DOCS_FOR_TREE)
      searcher = builder.score_brute_force().build()
      return cls(searcher, config, num_docs=num_docs, dim=dim, num_leaves_to_search=None)

    num_leaves = config.num_leaves or round(math.sqrt(num_docs))
    leaves_to_search = config.num_leaves_to_search or auto_leaves_to_search(num_leaves, num_docs)
    sample_size = config.training_sample_size or min(num_docs, 250_000)
    spherical = config.spherical
    if spherical is None:
      spherical = config.distance == "dot_product" and _unit_norm(embeddings)
    soar = {}
    if config.soar_lambda is not None and config.distance == "dot_product":
      soar = {"soar_lambda": config.soar_lambda,
              "overretrieve_factor": config.soar_overretrieve_factor}
    searcher = builder.tree(
        num_leaves=num_leaves, num_leaves_to_search=leaves_to_search,
        training_sample_size=sample_size, spherical=spherical, **soar,
    ).score_ah(
        config.dimensions_per_block,
        anisotropic_quantization_threshold=config.anisotropic_quantization_threshold,
        training_sample_size=sample_size,
    )
    if config.reorder_k:
      searcher = searcher.reorder(config.reorder_k)
    searcher = searcher.build()
    _log.info("ScaNN: %d embeddings, %d leaves (%d searched), spherical=%s", num_docs, num_leaves,
              leaves_to_search, spherical)
    return cls(searcher, config, num_docs=num_docs, dim=dim, num_leaves_to_search=leaves_to_search)

  def search(self, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None,
             reorder_k: int | None = None, parallel: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    """The (approximate) k best corpus rows for each query.

    Args:
      queries: [num_queries, dim].
      k: results per query, 1 <= k <= num_docs.
      leaves_to_search: leaves scored per query for this call (1 to `num_leaves`); None: the
        index's `num_leaves_to_search`. Ignored by a brute-force index.
      reorder_k: candidates rescored exactly for this call (raised to k when k is larger); None:
        the config's. Only for an index built with reordering (the float32 copy must exist).
      parallel: search the batch on ScaNN's query thread pool; False: on the calling thread only.

    Returns:
      scores: [num_queries, k] float32, decreasing (inner products, or negated squared distances).
      indices: [num_queries, k] int64 corpus rows. Slots ScaNN could not fill (the searched leaves
        held fewer than k points) have index -1 and score -inf, where ScaNN itself returns row 0
        with a NaN distance.

    Raises:
      ValueError: on a dimension mismatch, k outside [1, num_docs], leaves_to_search outside
        [1, num_leaves], or reorder_k on an index built without reordering.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"expected [num_queries, {self.dim}] queries, got {queries.shape}")
    if not 1 <= k <= self.num_docs:
      raise ValueError(f"k must be between 1 and the corpus size {self.num_docs}, got {k}")
    leaves = self.num_leaves_to_search if leaves_to_search is None else leaves_to_search
    if not self.brute_force and not 1 <= leaves <= self.num_leaves:
      raise ValueError(f"leaves_to_search must be between 1 and {self.num_leaves}, got {leaves}")
    if reorder_k is not None and (not self.config.reorder_k or reorder_k < 1):
      raise ValueError(f"reorder_k={reorder_k}: needs an index built with reordering "
                       f"(this one has reorder_k={self.config.reorder_k}) and a value >= 1")
    if queries.shape[0] == 0:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    kwargs = {"final_num_neighbors": k}
    if not self.brute_force:
      kwargs["leaves_to_search"] = leaves
      if self.config.reorder_k:
        kwargs["pre_reorder_num_neighbors"] = max(reorder_k or self.config.reorder_k, k)
    search = (self._searcher.search_batched_parallel if parallel
              else self._searcher.search_batched)
    neighbors, distances = search(queries, **kwargs)
    scores = np.asarray(distances, np.float32)
    if self.config.distance == "squared_l2":
      scores = -scores
    indices = np.asarray(neighbors).astype(np.int64)
    missing = np.isnan(scores)
    scores[missing], indices[missing] = -np.inf, -1
    return scores, indices

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the searcher (ScaNN's format, relative paths: the directory can move) and config."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    self._searcher.serialize(directory, relative_path=True)
    state = {"config": dataclasses.asdict(self.config), "num_docs": self.num_docs, "dim": self.dim,
             "num_leaves_to_search": self.num_leaves_to_search}
    with open(os.path.join(directory, _CONFIG_FILE), "w", encoding="utf-8") as f:
      json.dump(state, f, indent=2)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "ScannIndex":
    """Reads an index written by `save`."""
    directory = os.fspath(directory)
    with open(os.path.join(directory, _CONFIG_FILE), encoding="utf-8") as f:
      state = json.load(f)
    searcher = scann_ops_pybind.load_searcher(directory)
    return cls(searcher, ScannConfig(**state["config"]), num_docs=state["num_docs"],
               dim=state["dim"], num_leaves_to_search=state["num_leaves_to_search"])


def usable_cpus() -> int:
  """The CPUs this process may run on (its affinity), which ScaNN's own default ignores."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _unit_norm(embeddings: np.ndarray, tolerance: float = 1e-3) -> bool:
  """Whether the embeddings look L2-normalized, judged on up to 10,000 evenly spaced rows."""
  step = max(1, embeddings.shape[0] // 10_000)
  norms = np.linalg.norm(embeddings[::step], axis=1)
  return bool(np.all(np.abs(norms - 1.0) <= tolerance))
