"""Contriever (Izacard et al. 2021): unsupervised contrastive training on random crops.

Two crops of one chunk are a positive pair (`data.cropping`, texts from `data.sources`,
`data.text_sources`). `loss.type`:
  `moco`      (`src/moco.py`) queries through the trained encoder, keys through its EMA copy
              (`key_params`: moved towards the params *before* the keys are computed, no
              gradient, no optimizer state); InfoNCE over the own key and a queue of earlier
              keys (`queue` [queue_size, dim], rows sharded over `data`, and `queue_ptr`); the
              global batch's keys are enqueued after each step.
  `in_batch`  (`src/inbatch.py`) one encoder for both crops, a softmax over the global batch.
Keys go through the key encoder in training mode (dropout on), as the reference's `encoder_k`.
The queue starts as random unit rows (the reference's `normalize(randn)`). Metrics add `stdq`
and `stdk`, the reference's collapse detector.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from retrieval_jax import distributed, files, losses, optim, sharding
from retrieval_jax.data import cropping, text_sources
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import registry
from retrieval_jax.models.encoder import abstract_params
from retrieval_jax.recipes import base, contrastive, dual_encoder
from retrieval_jax.recipes import state as state_lib

LOSSES = ("moco", "in_batch")
_QUEUE_STREAM = 6


def crop_settings(crop: Any) -> cropping.CropSettings:
  return cropping.CropSettings(
      chunk_length=int(crop.chunk_length), ratio_min=float(crop.ratio_min),
      ratio_max=float(crop.ratio_max), deletion=float(crop.deletion),
      sampling_coefficient=float(crop.sampling_coefficient), sample=str(crop.sample))


def embedding_dim(dual: dual_encoder.DualEncoder) -> int:
  return dual.model.pooling.projection_dim or dual.model.encoder.hidden_size


def initial_queue(seed: int, size: int, dim: int) -> np.ndarray:
  """Random unit rows [size, dim] (float32), seeded."""
  rows = np.random.default_rng([seed, _QUEUE_STREAM]).standard_normal((size, dim))
  return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _check(config: Any, spec: dual_encoder.ModelSpec, mesh: jax.sharding.Mesh) -> None:
  """Errors before anything compiles, each naming its key."""
  sharding.validate(config, [spec.encoder])
  loss = config.loss
  if loss.type not in LOSSES:
    raise ValueError(f"loss.type={loss.type!r} is not one of {LOSSES}")
  if not config.model.get("shared_towers", False):
    raise ValueError("model.shared_towers=False: Contriever trains one encoder")
  if float(loss.temperature) <= 0:
    raise ValueError(f"loss.temperature={loss.temperature} must be positive")
  if loss.type != "moco":
    return
  size, batch = int(loss.queue_size), int(config.train.batch_size)
  if size < batch or size % batch:
    raise ValueError(f"loss.queue_size={size} must be a multiple of train.batch_size={batch} "
                     f"(the global batch of keys is enqueued each step)")
  data_axis = mesh.shape[sharding.DATA_AXIS]
  if size % data_axis:
    raise ValueError(f"loss.queue_size={size} must divide over the mesh's data axis "
                     f"({data_axis}): its rows are sharded")
  if not 0.0 <= float(loss.momentum) < 1.0:
    raise ValueError(f"loss.momentum={loss.momentum} must be in [0, 1)")



def train_step(state: dict, frozen: dict, batch: dict, *, dual: dual_encoder.DualEncoder,
               tx, schedule, loss_config: Any, dropout: bool = True) -> tuple[dict, dict]:
  """One update (module docstring); a non-finite loss keeps every entry of the state."""
  del frozen
  rng = state_lib.step_rng(state, dropout)
  rng_q, rng_k = (None, None) if rng is None else tuple(jax.random.split(rng))
  query = (batch["query_input_ids"], batch["query_attention_mask"])
  key = (batch["passage_input_ids"], batch["passage_attention_mask"])
  temperature = float(loss_config.temperature)
  updates = None
  if loss_config.type == "moco":
    key_params = state_lib.ema(state["key_params"], state["params"], float(loss_config.momentum))
    keys = jax.lax.stop_gradient(dual.embed(key_params, key, rng_k, "passage"))

    def loss_fn(params):
      queries = dual.embed(params, query, rng_q, "query")
      loss, metrics = losses.moco_loss(queries, keys, state["queue"], temperature=temperature)
      return loss, dict(metrics, stdq=losses.embedding_std(queries),
                        stdk=losses.embedding_std(keys))

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    queue, pointer = state_lib.enqueue(state["queue"], state["queue_ptr"], keys)
    updates = {"key_params": key_params, "queue": queue, "queue_ptr": pointer}
  else:
    def loss_fn(params):
      queries = dual.embed(params, query, rng_q, "query")
      keys = dual.embed(params, key, rng_k, "passage")
      loss, metrics = losses.in_batch_softmax_loss(
          queries, keys, positive_index=jnp.arange(queries.shape[0]), scale=1.0 / temperature)
      return loss, dict(metrics, stdq=losses.embedding_std(queries),
                        stdk=losses.embedding_std(keys))

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  new_state, update_metrics = state_lib.apply_gradients(state, grads, loss, tx=tx,
                                                        schedule=schedule, updates=updates)
  return new_state, dict(metrics, **update_metrics)


def streams_from_config(config: Any, tokenizer: Any) -> list[np.ndarray]:
  """One token stream per `data.sources` entry."""
  progress = bool(config.train.get("progress", True)) and jax.process_index() == 0
  return text_sources.token_streams(list(config.data.sources or ()), tokenizer,
                                    tfds_dir=config.data.get("tfds_dir"), progress=progress)


def build(config: Any, workdir, mesh: jax.sharding.Mesh) -> base.Recipe:
  workdir = files.as_path(workdir)
  dual, spec = contrastive.build_model(config)
  _check(config, spec, mesh)
  if jax.process_index() == 0:
    registry.save_model_files(spec, workdir / contrastive.MODEL_FILES)
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
  streams = streams_from_config(config, tokenizer)
  seed = int(config.seed)
  batcher = cropping.CropPairBatcher(
      streams, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
      pad_id=tokenizer.pad_token_id, settings=crop_settings(config.data.crop),
      global_batch=int(config.train.batch_size), seed=seed, process_index=jax.process_index(),
      process_count=jax.process_count(), pad_to_multiple_of=int(config.train.pad_to_multiple_of))
  steps = contrastive.total_steps(config, batcher.steps_per_epoch)
  tx = optim.optimizer_from_config(config.optim, steps)
  schedule = optim.schedule_from_config(config.optim, steps)
  boxed = {"shared": abstract_params(dual.model)}
  moco = config.loss.type == "moco"
  size, dim = int(config.loss.get("queue_size", 0)), embedding_dim(dual)
  extra = {}
  if moco:
    extra = {"key_params": boxed,
             "queue": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((size, dim), jnp.float32),
                                              names=("queue", "embed")),
             "queue_ptr": jax.ShapeDtypeStruct((), jnp.int32)}
  layout = state_lib.layout(boxed, tx, mesh, extra)

  def init_state():
    params = {"shared": dual_encoder.initial_tower_params(spec, seed)}
    values = {}
    if moco:
      values = {"key_params": params, "queue": initial_queue(seed, size, dim),
                "queue_ptr": np.int32(0)}
    return state_lib.init_state(layout.shardings, tx, params,
                                state_lib.rng_stream(seed, "dropout"), extra=values)

  def eval_models(state):
    return contrastive.towers_as_models(dual, distributed.host_local(state["params"]),
                                        tokenizer, spec, config)

  def export(state, out_dir):
    return dual_encoder.export(dual, state["params"], out_dir, spec.tokenizer_dir,
                               contrastive.export_max_length(config))

  info = dict(sources=list(config.data.sources), tokens=[int(len(s)) for s in streams],
              chunks=[int(c) for c in batcher.chunks], steps_per_epoch=batcher.steps_per_epoch,
              total_steps=steps, params=base.count_params(layout.abstract["params"]),
              model=str(spec.model_dir or "random"), loss=str(config.loss.type))
  return base.Recipe(
      name="contriever", total_steps=steps, batcher=batcher, abstract_state=layout.abstract,
      state_shardings=layout.shardings, batch_sharding=sharding.batch_sharding(mesh),
      init_state=init_state,
      train_step=functools.partial(train_step, dual=dual, tx=tx, schedule=schedule,
                                   loss_config=config.loss),
      eval_models=eval_models, export=export, info=info)


def restore_eval_models(config: Any, workdir, step: int | None = None):
  """The trained encoder as the `query` and `passage` roles (only params and step restored)."""
  return contrastive.restore_eval_models(config, workdir, step)
