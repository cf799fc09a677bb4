"""GradCache (Gao et al. 2021, arXiv 2101.06983): contrastive batches larger than memory.

A contrastive loss couples every query with every passage, so the usual backward pass keeps the
activations of the whole batch alive. GradCache splits the computation in three:

  1. embed all rows chunk by chunk with plain forwards (no activations kept);
  2. compute the loss and its gradient with respect to the embedding matrices (cheap: [N, d]);
  3. for each chunk, recompute its forward under `jax.vjp` and pull that chunk's embedding
     gradient back into parameter gradients, summing over chunks.

The result equals `jax.value_and_grad` of the full-batch loss (up to float rounding), while peak
activation memory is that of one chunk. Both loops are `jax.lax.map` / `jax.lax.scan` over a
chunk axis, not Python loops: the compiled program holds one copy of the encoder whatever the
number of chunks (a Python loop would inline it N / chunk_size times, slowing compilation and
letting XLA schedule chunks concurrently, which defeats the memory saving).

Towers: one `embed_fn(params, inputs, rng, tower)` with `tower` in {"query", "passage"}. A
two-tower model (DPR) picks its sub-tree of `params` by tower; a shared encoder ignores it. One
function and one params tree keep the gradient a single pytree that goes straight to optax.

Chunks are strided: chunk j holds rows j, j + num_chunks, j + 2 * num_chunks, ... When the rows
are sharded over the mesh's `data` axis in contiguous blocks and chunk_size is a multiple of that
axis, this split is a local reshape and each device embeds chunk_size / devices rows of every
chunk. Contiguous chunks would each live on a few devices; XLA then all-gathers every chunk and
each device computes the whole chunk redundantly.

Dropout: chunk j of tower t always uses `chunk_rng(rng, t, j)`, in the forward and in the
recomputation, so the recomputed activations are exactly the ones the loss saw.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp

TOWERS = ("query", "passage")

EmbedFn = Callable[[Any, Any, Any, str], jax.Array]


def chunk_rng(rng: jax.Array | None, tower: str, chunk_index) -> jax.Array | None:
  """The dropout key of chunk `chunk_index` of `tower` (None when rng is None)."""
  if rng is None:
    return None
  return jax.random.fold_in(jax.random.fold_in(rng, TOWERS.index(tower)), chunk_index)


def num_rows(inputs: Any) -> int:
  """The leading (row) dimension shared by every leaf of `inputs`."""
  sizes = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(inputs)}
  if not sizes:
    raise ValueError("inputs hold no arrays")
  if len(sizes) != 1:
    raise ValueError(f"input leaves disagree on the number of rows: {sorted(sizes)}")
  return sizes.pop()


def split_chunks(inputs: Any, chunk_size: int) -> Any:
  """Leaves [N, ...] -> [N // chunk_size, chunk_size, ...]; chunk j holds rows j::num_chunks."""
  num_chunks = num_rows(inputs) // chunk_size
  return jax.tree_util.tree_map(
      lambda x: jnp.swapaxes(x.reshape((chunk_size, num_chunks) + x.shape[1:]), 0, 1), inputs)


def merge_chunks(chunked: jax.Array) -> jax.Array:
  """Inverse of `split_chunks` for one array: [num_chunks, chunk_size, ...] -> [N, ...]."""
  return jnp.swapaxes(chunked, 0, 1).reshape((-1,) + chunked.shape[2:])


def _check_chunking(inputs: Any, chunk_size: int, tower: str) -> int:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) \
      or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  rows = num_rows(inputs)
  if rows % chunk_size:
    raise ValueError(f"{tower} rows ({rows}) are not divisible by chunk_size={chunk_size}; "
                     "pick a chunk size that divides both the query and passage counts")
  return rows // chunk_size


def _chunk_rngs(rng, tower: str, num_chunks: int):
  if rng is None:
    return None
  return jax.vmap(lambda index: chunk_rng(rng, tower, index))(jnp.arange(num_chunks))


def _embed_without_activations(embed_fn: EmbedFn, params, inputs, rng, tower: str,
                               chunk_size: int):
  """Step 1: [N, d] embeddings, one chunk at a time, with nothing kept for a backward."""
  num_chunks = _check_chunking(inputs, chunk_size, tower)
  # stop_gradient: even if a caller differentiates through this function, no chunk's
  # activations become residuals of an outer backward pass.
  frozen = jax.lax.stop_gradient(params)
  chunks = (split_chunks(inputs, chunk_size), _chunk_rngs(rng, tower, num_chunks))
  embeddings = jax.lax.map(lambda chunk: embed_fn(frozen, chunk[0], chunk[1], tower), chunks)
  return merge_chunks(embeddings)


def _accumulate_chunk_grads(embed_fn: EmbedFn, params, inputs, rng, tower: str,
                            chunk_size: int, embedding_grads: jax.Array, total):
  """Step 3: sum over chunks of vjp(chunk forward)(chunk's embedding gradient) into `total`."""
  num_chunks = num_rows(inputs) // chunk_size
  chunks = (split_chunks(inputs, chunk_size), _chunk_rngs(rng, tower, num_chunks),
            split_chunks(embedding_grads, chunk_size))

  def add_chunk(total, chunk):
    chunk_inputs, chunk_key, chunk_grads = chunk
    _, pull_back = jax.vjp(lambda p: embed_fn(p, chunk_inputs, chunk_key, tower), params)
    (param_grads,) = pull_back(chunk_grads)
    return jax.tree_util.tree_map(lambda t, g: t + g.astype(t.dtype), total, param_grads), None

  total, _ = jax.lax.scan(add_chunk, total, chunks)
  return total


def grad_cache_loss_and_grads(embed_fn: EmbedFn, loss_fn: Callable[..., Any], params: Any,
                              query_inputs: Any, passage_inputs: Any, *, chunk_size: int,
                              rng: jax.Array | None = None, has_aux: bool = False
                              ) -> tuple[Any, Any]:
  """The loss of the whole batch and its parameter gradients, with one chunk's activations.

  Args:
    embed_fn: `embed_fn(params, inputs_chunk, rng_chunk, tower) -> [chunk_size, d]`; must be
      a pure function of its arguments (dropout only through `rng_chunk`, which is None when
      `rng` is None: run deterministically then).
    loss_fn: `loss_fn(query_emb [Nq, d], passage_emb [Np, d]) -> loss` (or `(loss, aux)` with
      has_aux), e.g. a `functools.partial` of `losses.in_batch_softmax_loss` over
      positive_index.
    params: The parameter pytree passed to embed_fn (both towers).
    query_inputs: Pytree of arrays with a leading row axis Nq (e.g. input_ids, attention_mask).
    passage_inputs: Same for the Np passages.
    chunk_size: Rows per forward; must divide Nq and Np. Static under jit.
    rng: Dropout key, or None for a deterministic forward.
    has_aux: Whether loss_fn returns (loss, aux), as in `jax.value_and_grad`.

  Returns:
    (loss, grads), or ((loss, aux), grads) with has_aux; grads has the structure and dtypes of
    params (accumulated over chunks in at least float32).

  Raises:
    ValueError: If chunk_size does not divide the query or passage row count.
  """
  _check_chunking(query_inputs, chunk_size, "query")
  _check_chunking(passage_inputs, chunk_size, "passage")

  query_emb = _embed_without_activations(embed_fn, params, query_inputs, rng, "query",
                                         chunk_size)
  passage_emb = _embed_without_activations(embed_fn, params, passage_inputs, rng, "passage",
                                           chunk_size)

  # Step 2: the gradient of the loss with respect to the embeddings, the "gradient cache".
  value, (query_grads, passage_grads) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=has_aux)(query_emb, passage_emb)

  # Accumulate in float32 at least: summing many chunk gradients in bfloat16 loses bits.
  total = jax.tree_util.tree_map(
      lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params)
  total = _accumulate_chunk_grads(embed_fn, params, query_inputs, rng, "query", chunk_size,
                                  query_grads, total)
  total = _accumulate_chunk_grads(embed_fn, params, passage_inputs, rng, "passage", chunk_size,
                                  passage_grads, total)
  grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), total, params)
  return value, grads
