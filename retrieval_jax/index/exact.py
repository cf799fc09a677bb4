"""Exact maximum-inner-product search: chunked, sharded matmul plus `jax.lax.top_k`.

The corpus is streamed to the devices one chunk at a time. Every chunk is split by rows over all the
devices of a mesh; each device scores the queries against its rows, keeps its local top-k, and the
per-device lists are merged into a running global top-k. Nothing larger than one chunk of the corpus
and one batch of queries is ever on a device, so the corpus may be far larger than device memory.

Ties are broken by the lower corpus index, whatever the number of devices or the chunk size:
`jax.lax.top_k` puts the lower position first among equal values, and every concatenation below
lists candidates in increasing corpus-index order (earlier chunks before later ones, device 0
before device 1, and each device's rows in order).
"""

import functools
import math

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import jax.numpy as jnp
import numpy as np
import tqdm

from retrieval_jax import distributed, sharding

# Dtypes that go to the device as they are and are widened to float32 there; anything else (float64,
# integers) is converted to float32 on the host, one chunk at a time.
_DEVICE_DTYPES = (np.dtype(np.float16), np.dtype(jnp.bfloat16), np.dtype(np.float32))
# Rows per device come in whole multiples of this (see exact_search); the per-process
# corpus shares (`distributed.shard_range`) use the same alignment, so that a shard's rows
# sit at the same offsets in their tiles as in the whole corpus (bit-identical scores).
_ROW_ALIGNMENT = distributed.ROW_ALIGNMENT


def default_mesh() -> Mesh:
  """This process's devices on the `data` axis (`sharding.local_mesh`)."""
  return sharding.local_mesh()


def exact_search(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    mesh: Mesh | None = None,
    corpus_chunk: int = 65536,
    query_batch: int = 1024,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """The k corpus rows with the largest inner product with each query, best first.

  Args:
    queries: [num_queries, dim] query embeddings (float16, bfloat16, float32 or anything castable).
    corpus: [num_docs, dim] document embeddings; may be memory-mapped: it is read chunk by chunk.
    k: how many results per query, 1 <= k <= num_docs.
    mesh: the devices to shard the corpus over; every device of the mesh gets an equal share of each
      chunk (the rows are split over all mesh axes together). Its devices must be addressable by
      this process. Default: `default_mesh()`.
    corpus_chunk: corpus rows per device per step, rounded up to a multiple of 128 (fewer for a
      small corpus, so that padding stays small).
    query_batch: queries scored together in one step.
    progress: show a progress bar over the corpus chunks.

  Returns:
    scores: [num_queries, k] float32 inner products, computed in float32 whatever the input dtype,
      in decreasing order.
    indices: [num_queries, k] int64 corpus rows of those scores; among equal scores the lower row
      comes first.

  Raises:
    ValueError: if the shapes disagree, k < 1, or k > num_docs (there are not k documents).
  """
  queries = np.asarray(queries)
  corpus = corpus if isinstance(corpus, np.ndarray) else np.asarray(corpus)
  if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
    raise ValueError(
        f"expected queries [num_queries, dim] and corpus [num_docs, dim], got {queries.shape} and "
        f"{corpus.shape}")
  num_queries, num_docs = queries.shape[0], corpus.shape[0]
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}")
  if k > num_docs:
    raise ValueError(f"k={k} is larger than the corpus ({num_docs} documents); "
                     f"ask for k <= {num_docs}")
  if corpus_chunk < 1 or query_batch < 1:
    raise ValueError(
        f"corpus_chunk and query_batch must be positive, got {corpus_chunk}, {query_batch}")
  if num_queries == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

  mesh = default_mesh() if mesh is None else mesh
  num_devices = mesh.devices.size
  # Never pad a small corpus up to a full chunk per device: take just enough rows to cover it. Whole
  # blocks of _ROW_ALIGNMENT rows keep every corpus row at the same offset within its matmul tile
  # whatever the number of devices, which is what makes 1 and 8 devices agree to the last bit on CPU
  # (a ragged edge tile is summed in another order); it is also the TPU lane width.
  rows_per_device = _round_up(min(corpus_chunk, math.ceil(num_docs / num_devices)), _ROW_ALIGNMENT)
  rows_per_step = rows_per_device * num_devices
  if num_docs + rows_per_step >= 2**31:  # Padded row ids must fit the int32 ids used on the device.
    raise ValueError(f"{num_docs} documents is too many: row ids are int32 on the devices")
  batch_size = min(query_batch, num_queries)
  num_batches = math.ceil(num_queries / batch_size)
  step = _compiled_step(mesh, k, min(k, rows_per_device), rows_per_device)
  corpus_sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
  replicated = NamedSharding(mesh, PartitionSpec())

  # Every batch is padded to batch_size rows so that one compiled step serves all of them.
  query_batches = [
      _padded(_device_ready(queries[b * batch_size:(b + 1) * batch_size]), batch_size)
      for b in range(num_batches)
  ]
  # Start from k "no result" slots (-inf, index -1); k <= num_docs real scores always displace them.
  running = [(jnp.full((batch_size, k), -jnp.inf, jnp.float32),
              jnp.full((batch_size, k), -1, jnp.int32)) for _ in range(num_batches)]
  running = jax.device_put(running, replicated)
  chunk_starts = range(0, num_docs, rows_per_step)
  for chunk_start in tqdm.tqdm(chunk_starts, desc="exact search", disable=not progress):
    chunk = _padded(_device_ready(corpus[chunk_start:chunk_start + rows_per_step]), rows_per_step)
    chunk_on_devices = jax.device_put(chunk, corpus_sharding)
    for b in range(num_batches):
      running[b] = step(*running[b], jax.device_put(query_batches[b], replicated), chunk_on_devices,
                        np.int32(chunk_start), np.int32(num_docs))

  scores = np.concatenate([np.asarray(s) for s, _ in running])[:num_queries]
  indices = np.concatenate([np.asarray(i) for _, i in running])[:num_queries]
  return scores.astype(np.float32), indices.astype(np.int64)


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _device_ready(array: np.ndarray) -> np.ndarray:
  """The array in a dtype the step accepts; half precision stays half to halve the transfer."""
  array = np.asarray(array)
  return array if array.dtype in _DEVICE_DTYPES else array.astype(np.float32)


def _padded(rows: np.ndarray, num_rows: int) -> np.ndarray:
  """`rows` with zero rows appended up to num_rows (their scores are masked or sliced off later)."""
  if rows.shape[0] == num_rows:
    return rows
  padding = np.zeros((num_rows - rows.shape[0], rows.shape[1]), rows.dtype)
  return np.concatenate([rows, padding])


@functools.lru_cache(maxsize=32)
def _compiled_step(mesh: Mesh, k: int, local_k: int, rows_per_device: int):
  """A jitted (running top-k, queries, corpus chunk) -> running top-k update for one chunk.

  Cached so that repeated searches with the same shapes reuse one compilation.
  """
  axes = tuple(mesh.axis_names)

  def step(running_scores, running_ids, queries, corpus_rows, chunk_start, num_docs):
    # HIGHEST: on TPU the default float32 matmul goes through bfloat16 passes, which is not exact.
    scores = jnp.dot(queries.astype(jnp.float32), corpus_rows.astype(jnp.float32).T,
                     precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    device = jax.lax.axis_index(axes)
    row_ids = chunk_start + device * rows_per_device + jnp.arange(rows_per_device, dtype=jnp.int32)
    # Padding rows past the end of the corpus score -inf; k <= num_docs keeps them out of results.
    scores = jnp.where(row_ids[None, :] < num_docs, scores, -jnp.inf)
    local_scores, local_positions = jax.lax.top_k(scores, local_k)
    # Every device gets every device's list, in device order, i.e. in row order; each then does the
    # (small, identical) merge itself, so the result is replicated without a separate broadcast.
    candidate_scores = jax.lax.all_gather(local_scores, axes, axis=1, tiled=True)
    candidate_ids = jax.lax.all_gather(row_ids[local_positions], axes, axis=1, tiled=True)
    # Running results come from earlier chunks (lower rows), so they go first for the tie-break.
    merged_scores = jnp.concatenate([running_scores, candidate_scores], axis=1)
    merged_ids = jnp.concatenate([running_ids, candidate_ids], axis=1)
    top_scores, top_positions = jax.lax.top_k(merged_scores, k)
    return top_scores, jnp.take_along_axis(merged_ids, top_positions, axis=1)

  replicated_spec, sharded_spec = PartitionSpec(), PartitionSpec(axes)
  sharded_step = jax.shard_map(
      step,
      mesh=mesh,
      in_specs=(replicated_spec,) * 3 + (sharded_spec,) + (replicated_spec,) * 2,
      out_specs=(replicated_spec, replicated_spec),
      # The outputs are replicated (every device merges the same all-gathered lists), but the
      # public all_gather is typed as device-varying, so the static check cannot see it.
      check_vma=False,
  )
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(
      sharded_step,
      in_shardings=(replicated, replicated, replicated, NamedSharding(mesh, PartitionSpec(axes)),
                    replicated, replicated),
      out_shardings=(replicated, replicated),
      donate_argnums=(0, 1),
  )
