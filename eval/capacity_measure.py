"""Measurements behind the capacity plan: they run or compile our code on this machine.

Every function returns plain, JSON-ready dicts; `capacity_plan.py` labels them `measured` and
computes the rest of the plan from them.

  * `measure_flops`: `jax.jit(forward).lower(abstract args).compile().cost_analysis()` of our
    `TextEncoder` ([CLS] pooling) at batch x length shapes, divided by tokens.
  * `measure_train_memory`: `recipes.dual_encoder.train_step` (the real step: two towers,
    in-batch softmax with hard negatives, AdamW with clipping, dropout on, the state donated as
    the training loop does) compiled, never run, for one device's share of the global batch;
    `memory_analysis()` gives argument + output - aliased + temp bytes. Full batch,
    `EncoderConfig.remat`, or GradCache (`loss.grad_cache`) with a chunk size. XLA:CPU fuses
    and lays out differently from XLA:TPU / XLA:GPU (bf16 upcasts, unfused softmax and dropout
    masks), so these are estimates of the accelerator programs.
  * `measure_scann`: `index.scann_index.ScannIndex.build` with the default `ScannConfig` on
    random unit vectors: wall and CPU seconds, bytes written by `save`.
  * `measure_cpu_anchor`: our real CPU encoding throughput with the packaged MiniLM.

jax and retrieval_jax are imported inside the functions, so that the plan's CLI can define its
flags without importing them.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np


def _first(cost: Any) -> dict[str, Any]:
  """`cost_analysis()` is a dict, or a one-element list of dicts in older JAX versions."""
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def encoder_config(shape: dict[str, int], **overrides):
  """An `EncoderConfig` of the given shape (sizes) with `overrides` (e.g. dtype)."""
  from retrieval_jax.models.config import EncoderConfig  # pylint: disable=g-import-not-at-top
  return EncoderConfig(**shape, **overrides)


def _cls_encoder(config):
  """Our `TextEncoder` with [CLS] pooling (DPR's and ANCE's) and its abstract params."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models.encoder import TextEncoder, abstract_params
  from retrieval_jax.models.pooling import PoolingConfig  # pylint: disable=g-import-not-at-top

  model = TextEncoder(config, PoolingConfig("cls"))
  return model, nn.meta.unbox(abstract_params(model))


def param_count(config) -> int:
  """Parameters of one tower (backbone with pooler, no projection), from the abstract params."""
  import jax  # pylint: disable=g-import-not-at-top

  _, params = _cls_encoder(config)
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def measure_flops(config, batch: int, lengths: Sequence[int],
                  analytic: Callable[[int], float] | None = None
                  ) -> dict[int, dict[str, float]]:
  """FLOPs per token of our encoder's forward from XLA's cost analysis (nothing allocated).

  Args:
    config: The encoder's EncoderConfig.
    batch: Sequences per compiled forward.
    lengths: Sequence lengths to compile.
    analytic: Optional formula (length -> FLOPs per token), stored beside each measurement as
      `analytic_flops_per_token` for the cross-check.

  Returns:
    Per length: batch, length, flops, flops_per_token, [analytic_flops_per_token], compile_s.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  model, params = _cls_encoder(config)

  def forward(params, input_ids, attention_mask):
    return model.apply({"params": params}, input_ids, attention_mask)

  out = {}
  for length in lengths:
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    start = time.perf_counter()
    compiled = jax.jit(forward).lower(params, ids, ids).compile()
    flops = float(_first(compiled.cost_analysis())["flops"])
    out[length] = dict(batch=batch, length=length, flops=flops,
                       flops_per_token=flops / (batch * length))
    if analytic is not None:
      out[length]["analytic_flops_per_token"] = analytic(length)
    out[length]["compile_s"] = time.perf_counter() - start
  return out


def train_step_lowering(dual, tx, schedule, loss_config):
  """The plan's only use of `dual_encoder.train_step` and `abstract_state`.

  Kept in one place so that a change of the recipe's step or state signature is adapted here.

  Args:
    dual: The `DualEncoder`.
    tx: Its optax optimizer.
    schedule: The learning-rate schedule.
    loss_config: The step's loss ConfigDict.

  Returns:
    `(state, lower)`: the abstract train state and `lower(batch)`, which lowers the jitted step
    on that state and an abstract batch.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from retrieval_jax.recipes import dual_encoder  # pylint: disable=g-import-not-at-top

  step = functools.partial(dual_encoder.train_step, dual=dual, tx=tx, schedule=schedule,
                           loss_config=loss_config)
  state = dual_encoder.abstract_state(dual, tx)
  # The training loop donates the state, so new params reuse the old buffers: donate it here too
  # or the compile counts them twice.
  jitted = jax.jit(step, donate_argnums=0)
  frozen = {}  # A dual encoder reads no frozen model.
  return state, lambda batch: jitted.lower(state, frozen, batch)


def measure_train_memory(config, *, queries: int, group: int, query_tokens: int,
                         passage_tokens: int, mode: str, chunk_size: int = 0,
                         shared: bool = False, in_batch: bool = True,
                         optimizer: str = "adamw") -> dict[str, Any]:
  """Compiles (never runs) one device's dual-encoder train step; XLA's memory and cost analysis.

  Args:
    config: The tower's EncoderConfig (remat is set from `mode`).
    queries: Query rows on the device; passages are queries x group.
    group: Passages per query (positive + hard negatives).
    query_tokens: Query length.
    passage_tokens: Passage length.
    mode: `full` (one value_and_grad over the batch), `remat` (the same with every block
      rematerialised) or `grad_cache` (chunks of `chunk_size` rows).
    chunk_size: GradCache rows per forward.
    shared: One tower for queries and passages (ANCE) instead of two (DPR).
    in_batch: Score each query against every passage of the batch (DPR), or only its own
      (ANCE's NLL).
    optimizer: `adamw` (DPR) or `lamb` (ANCE), as `optim.make_optimizer` names them.

  Returns:
    XLA's byte counts, peak_bytes, state and batch bytes, the shapes, compile_s, and (not for
    GradCache) the step's FLOPs and bytes accessed.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from retrieval_jax import optim  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models.encoder import TextEncoder  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models.pooling import PoolingConfig  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import dual_encoder  # pylint: disable=g-import-not-at-top

  if mode not in ("full", "remat", "grad_cache"):
    raise ValueError(f"mode {mode!r}")
  config = config.replace(remat=mode == "remat")
  dual = dual_encoder.DualEncoder(TextEncoder(config, PoolingConfig("cls")), shared=shared)
  # Float32 moments, linear warm-up/decay, clipping.
  tx = optim.make_optimizer(1e-5, 10_000, 1_000, max_grad_norm=2.0, name=optimizer)
  schedule = optim.make_schedule(1e-5, 10_000, 1_000)
  loss_config = ml_collections.ConfigDict(dict(
      scale=1.0, symmetric=False, in_batch=in_batch, grad_cache=mode == "grad_cache",
      chunk_size=chunk_size or 1))
  shape = jax.ShapeDtypeStruct
  batch = dict(query_input_ids=shape((queries, query_tokens), jnp.int32),
               query_attention_mask=shape((queries, query_tokens), jnp.int32),
               passage_input_ids=shape((queries, group, passage_tokens), jnp.int32),
               passage_attention_mask=shape((queries, group, passage_tokens), jnp.int32))
  state, lower = train_step_lowering(dual, tx, schedule, loss_config)
  start = time.perf_counter()
  compiled = lower(batch).compile()
  compile_s = time.perf_counter() - start
  stats = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes")
  result: dict[str, Any] = {name: int(getattr(stats, name)) for name in fields}
  result.update(
      peak_bytes=(result["argument_size_in_bytes"] + result["output_size_in_bytes"]
                  - result["alias_size_in_bytes"] + result["temp_size_in_bytes"]),
      state_bytes=int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))),
      batch_bytes=int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(batch))),
      mode=mode, chunk_size=chunk_size if mode == "grad_cache" else None, queries=queries,
      passages=queries * group, query_tokens=query_tokens, passage_tokens=passage_tokens,
      dtype=jnp.dtype(config.dtype).name, compile_s=compile_s, shared=shared,
      in_batch=in_batch, optimizer=optimizer)
  if mode != "grad_cache":  # The cost analysis counts a loop body (GradCache's scan) once.
    cost = _first(compiled.cost_analysis())
    result["flops"] = float(cost["flops"])
    result["bytes_accessed"] = float(cost["bytes accessed"])
  return result


def measure_scann(sizes: Sequence[int], dim: int = 768, seed: int = 0) -> list[dict[str, Any]]:
  """Builds the default ScaNN index on random unit vectors; times it and sizes its files.

  Args:
    sizes: Vectors per build.
    dim: Vector dimension.
    seed: Seed of the random vectors.

  Returns:
    Per build: vectors, wall and CPU seconds, leaves, file sizes and bytes per vector.
  """
  # pylint: disable=g-import-not-at-top
  from retrieval_jax.index.scann_index import ScannConfig, ScannIndex

  rng = np.random.default_rng(seed)
  results = []
  for n in sizes:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    index = ScannIndex.build(vectors, ScannConfig())
    wall = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    with tempfile.TemporaryDirectory() as directory:
      index.save(directory)
      files = {name: os.path.getsize(os.path.join(directory, name))
               for name in sorted(os.listdir(directory))}
    hashed = sum(size for name, size in files.items()
                 if name.startswith("hashed_dataset") or name == "datapoint_to_token.npy")
    results.append(dict(
        vectors=n, build_wall_s=wall, build_cpu_s=cpu, num_leaves=round(math.sqrt(n)),
        leaves_searched=index.num_leaves_to_search, files=files,
        disk_bytes=sum(files.values()), hashed_bytes_per_vector=hashed / n,
        reorder_bytes_per_vector=files.get("dataset.npy", 0) / n))
    del index
  return results


def measure_cpu_anchor(num_texts: int = 256, length: int = 128, batch_size: int = 32
                       ) -> dict[str, Any]:
  """Our encoding throughput here: `encode.encode_token_ids` with MiniLM on random token ids.

  Args:
    num_texts: Texts per timed run.
    length: Tokens per text.
    batch_size: Texts per encoder call.

  Returns:
    The run's sizes, seconds of each timed run, texts/s, tokens/s and achieved FLOP/s.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from retrieval_jax import encode  # pylint: disable=g-import-not-at-top

  encoder = encode.load_encoder("minilm")
  vocab = encoder.config.vocab_size
  rng = np.random.default_rng(0)
  # [CLS] body [SEP] with BERT's ids; every sequence the same length: one compiled shape.
  token_ids = [[101] + rng.integers(1000, vocab, length - 2).tolist() + [102]
               for _ in range(num_texts)]
  run = functools.partial(encode.encode_token_ids, encoder, token_ids, max_length=length,
                          batch_size=batch_size, progress=False)
  run()  # Compiles, so that the timed runs do not.
  seconds = []
  for _ in range(2):
    start = time.perf_counter()
    run()
    seconds.append(time.perf_counter() - start)
  flops = measure_flops(encoder.config, batch_size, [length])[length]["flops_per_token"]
  best = min(seconds)
  return dict(model="MiniLM (all-MiniLM-L6-v2)", texts=num_texts, length=length,
              batch_size=batch_size, seconds=seconds, texts_per_s=num_texts / best,
              tokens_per_s=num_texts * length / best, flops_per_token=flops,
              achieved_flops=num_texts * length * flops / best,
              devices=len(jax.local_devices()), cpu_count=os.cpu_count())
