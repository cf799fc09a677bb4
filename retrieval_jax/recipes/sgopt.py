"""SG-OPT (Kim, Yoo & Lee, ACL 2021): self-guided contrastive learning of [CLS] sentence vectors.

Two copies of one encoder read the same sentences: BERT_T is trained, BERT_F is a frozen copy
(a `base.FrozenInput`: never in the optimizer, restored from the initial weights). The anchor
c_i is BERT_T's pooled vector (`model.pooling`, [CLS] in the paper) through a projection head
(`loss.head_widths`, Linear-GELU-Linear-GELU, shared by both sides, dropped at inference); the
views h_{i,l} are BERT_F's masked-mean hidden states of every layer l (the embedding output
and each layer) through the same head. `loss.type`:
  `sg_opt`  `losses.sg_opt_loss`: every (sentence, layer) pair is a positive, the other
            sentences' views of every layer the negatives (galsang/SG-BERT `NTXentLoss`).
  `sg`      one layer sampled per sentence, the full NT-Xent over anchors and views
            (`losses.nt_xent_loss`, the paper's plain SG).
plus `loss.regularizer` · Σ‖θ_T − θ_F‖² over the encoder (λ = 0.1). BERT_T's embedding layer
is frozen: it is not a parameter here at all but read from BERT_F's (identical, never
trained), so neither a gradient nor optimizer moments exist for it. A checkpoint holds the
trained layers and the head; evaluation and export take the embeddings from `model.name`,
the source of the frozen copy. `loss.frozen_dropout`: whether BERT_F runs with dropout (the
released code calls `.eval()` on its copy, but the trainer's `loss_model.train()` turns
dropout back on for every submodule, so the copy effectively trains with dropout).

Batches are single sentences (`data.sentence_batches`); evaluation is the `sts` evaluator and
the run keeps its best dev checkpoint (`train.select_best`, `retrieval_jax.train`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from retrieval_jax import distributed, encode, files, losses, optim, sharding
from retrieval_jax.data import sentence_batches, stsb
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import hf, registry
from retrieval_jax.models.encoder import TextEncoder, abstract_params
from retrieval_jax.models.heads import MLPProjectionConfig
from retrieval_jax.models.transformer import TransformerEncoder
from retrieval_jax.recipes import base, contrastive
from retrieval_jax.recipes import state as state_lib

LOSSES = ("sg_opt", "sg")
FROZEN = "copy"
_FROZEN_PART = "embeddings"  # BERT_T's part that is read from the frozen copy


def model_spec(config: Any, files_dir: str | os.PathLike | None = None
               ) -> registry.TransformerSpec:
  """`config.model` with SG-OPT's projection head (`loss.head_widths`, GELU after each layer)."""
  spec = registry.build(config.model, files_dir=files_dir)
  if not isinstance(spec, registry.TransformerSpec):
    raise ValueError(f"model.type={config.model.get('type')!r}: SG-OPT trains a Transformer")
  widths = tuple(int(w) for w in config.loss.head_widths)
  return dataclasses.replace(spec, mlp_projection=MLPProjectionConfig(widths,
                                                                      final_activation=True))


def trainable(params: dict) -> dict:
  """BERT_T's trained parameters: everything but the backbone's embedding layer."""
  backbone = {k: v for k, v in params["backbone"].items() if k != _FROZEN_PART}
  return dict(params, backbone=backbone)


def frozen_copy(params: dict) -> dict:
  """BERT_F: the backbone of the starting parameters (no heads)."""
  return {"backbone": params["backbone"]}


def with_frozen_part(params: dict, copy: dict) -> dict:
  """BERT_T's full parameters: its trained ones plus the copy's embedding layer."""
  backbone = dict(params["backbone"], **{_FROZEN_PART: copy["backbone"][_FROZEN_PART]})
  return dict(params, backbone=backbone)


def layer_views(hidden_states: tuple[jax.Array, ...], attention_mask: jax.Array) -> jax.Array:
  """[B, L, H] float32: each layer's hidden states averaged over the attended tokens."""
  mask = attention_mask.astype(jnp.float32)[:, :, None]
  count = jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  return jnp.stack([jnp.sum(h.astype(jnp.float32) * mask, axis=1) / count
                    for h in hidden_states], axis=1)


def train_step(state: dict, frozen: dict, batch: dict, *, model: TextEncoder,
               tx, schedule, loss_config: Any) -> tuple[dict, dict]:
  """One update of BERT_T and the head on the SG-OPT (or SG) loss plus the regulariser."""
  rng_t, rng_f, rng_layer = jax.random.split(state_lib.step_rng(state), 3)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  copy = frozen[FROZEN]
  frozen_dropout = bool(loss_config.frozen_dropout)
  backbone = TransformerEncoder(model.encoder)
  views = backbone.apply({"params": copy["backbone"]}, ids, mask, None, not frozen_dropout,
                         True, rngs={"dropout": rng_f} if frozen_dropout else None)
  views = jax.lax.stop_gradient(layer_views(views.hidden_states, mask))
  if loss_config.type == "sg":  # one view per sentence, its layer drawn uniformly
    layer = jax.random.randint(rng_layer, (views.shape[0],), 0, views.shape[1])
    views = views[jnp.arange(views.shape[0]), layer]
  temperature = float(loss_config.temperature)
  weight = float(loss_config.regularizer)
  reference = {k: v for k, v in copy["backbone"].items() if k != _FROZEN_PART}

  def loss_fn(params):
    full = with_frozen_part(params, copy)
    anchors = model.apply({"params": full}, ids, mask, deterministic=False,
                          rngs={"dropout": rng_t}, method=TextEncoder.outputs).projection
    projected = model.apply({"params": full}, views, method=lambda m, x: m.mlp(x))
    if loss_config.type == "sg":
      contrast, metrics = losses.nt_xent_loss(anchors, projected, temperature)
    else:
      contrast, metrics = losses.sg_opt_loss(anchors, projected, temperature)
    distance = losses.squared_distance(params["backbone"], reference)
    return contrast + weight * distance, dict(metrics, contrast=contrast, distance=distance)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  new_state, update_metrics = state_lib.apply_gradients(state, grads, loss, tx=tx,
                                                        schedule=schedule)
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
  return new_state, dict(metrics, **update_metrics)


def _check(config: Any, spec: registry.TransformerSpec) -> None:
  """Errors before anything compiles, each naming its key."""
  sharding.validate(config, [spec.encoder])
  loss = config.loss
  if loss.type not in LOSSES:
    raise ValueError(f"loss.type={loss.type!r} is not one of {LOSSES}")
  if float(loss.temperature) <= 0:
    raise ValueError(f"loss.temperature={loss.temperature} must be positive")
  if float(loss.regularizer) < 0:
    raise ValueError(f"loss.regularizer={loss.regularizer} must be non-negative")
  if not loss.head_widths:
    raise ValueError("loss.head_widths is empty: SG-OPT needs its projection head")
  if spec.pooling.projection_dim:
    raise ValueError("model.projection_dim: SG-OPT's sentence vector is the pooled state "
                     "itself (the projection head is loss.head_widths)")


def training_sentences(config: Any) -> list[str]:
  """Every sentence of the STS-B splits `data.splits` (both sides of each pair, in order)."""
  out = []
  for split in config.data.splits:
    out += stsb.sentences(stsb.load_pairs(config.data.dir, split,
                                          tfds_dir=config.data.get("tfds_dir")))
  if config.data.get("max_sentences"):
    out = out[:int(config.data.max_sentences)]
  return out


def eval_model(spec: registry.TransformerSpec) -> TextEncoder:
  """BERT_T at inference: the encoder and its pooling, without the projection head."""
  return TextEncoder(spec.encoder, spec.pooling)


def eval_params(params: dict, copy: dict) -> dict:
  """Host params of `eval_model` from the trained ones and the frozen copy."""
  full = with_frozen_part(params, copy)
  return {k: v for k, v in full.items() if k != "mlp_head"}


def as_models(spec: registry.TransformerSpec, params: dict, copy: dict, tokenizer: Any
              ) -> base.EvalModels:
  encoder = encode.LoadedEncoder(eval_model(spec), eval_params(params, copy), tokenizer,
                                 spec.model_dir or pathlib.Path("."))
  return base.EvalModels(query=encoder, passage=encoder)


def _load_copy(spec: registry.TransformerSpec, seed: int) -> dict:
  return frozen_copy(spec.initial_params(state_lib.rng_stream(seed, "init")))


def build(config: Any, workdir, mesh: jax.sharding.Mesh) -> base.Recipe:
  """Everything the loop needs to train SG-OPT as `config` says."""
  workdir = files.as_path(workdir)
  spec = model_spec(config)
  _check(config, spec)
  if jax.process_index() == 0:
    registry.save_model_files(spec, workdir / contrastive.MODEL_FILES)
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
  max_length = int(config.train.max_length)
  sentences = training_sentences(config)
  batcher = sentence_batches.SentenceBatcher(
      tok.tokenize(tokenizer, sentences, max_length), global_batch=int(config.train.batch_size),
      seed=int(config.seed), pad_id=int(tokenizer.pad_token_id), max_length=max_length,
      pad_to_multiple_of=int(config.train.pad_to_multiple_of),
      process_index=jax.process_index(), process_count=jax.process_count())
  steps = contrastive.total_steps(config, batcher.steps_per_epoch)
  tx = optim.optimizer_from_config(config.optim, steps)
  schedule = optim.schedule_from_config(config.optim, steps)
  module = spec.module
  boxed = abstract_params(module)
  layout = state_lib.layout(trainable(boxed), tx, mesh)
  seed = int(config.seed)
  copy_cache: dict[str, Any] = {}

  def load_copy():
    if "host" not in copy_cache:
      copy_cache["host"] = _load_copy(spec, seed)
    return copy_cache["host"]

  def init_state():
    params = trainable(spec.initial_params(state_lib.rng_stream(seed, "init")))
    return state_lib.init_state(layout.shardings, tx, params,
                                state_lib.rng_stream(seed, "dropout"))

  def eval_models(state):
    return as_models(spec, distributed.host_local(state["params"]), load_copy(), tokenizer)

  def export(state, out_dir):
    host = distributed.host_local(state["params"])
    if jax.process_index() != 0:
      return []
    return [hf.save_pretrained(files.as_path(out_dir) / "encoder", spec.encoder,
                               eval_params(host, load_copy()), pooling=spec.pooling,
                               tokenizer_dir=spec.tokenizer_dir, max_seq_length=max_length)]

  source = str(spec.model_dir or f"random init (seed {seed})")
  info = dict(sentences=len(sentences), splits=list(config.data.splits),
              steps_per_epoch=batcher.steps_per_epoch, total_steps=steps,
              params=base.count_params(layout.abstract["params"]), model=source,
              loss=str(config.loss.type))
  return base.Recipe(
      name="sgopt", total_steps=steps, batcher=batcher, abstract_state=layout.abstract,
      state_shardings=layout.shardings, batch_sharding=sharding.batch_sharding(mesh),
      init_state=init_state,
      train_step=functools.partial(train_step, model=module, tx=tx, schedule=schedule,
                                   loss_config=config.loss),
      eval_models=eval_models, export=export,
      frozen={FROZEN: base.FrozenInput(abstract=frozen_copy(boxed), load=load_copy,
                                       source=source)},
      info=info)


def restore_eval_models(config: Any, workdir, step: int | str | None = None
                        ) -> tuple[base.EvalModels, int]:
  """(BERT_T of a checkpoint of `workdir` (a step, `best`, None: the latest), its step)."""
  from retrieval_jax import checkpoint  # pylint: disable=g-import-not-at-top

  # From model.name, not the workdir's model files: the embeddings are read from the weights.
  spec = model_spec(config)
  tx = optim.optimizer_from_config(config.optim, int(config.optim.get("warmup_steps") or 0) + 1)
  mesh = sharding.make_mesh(-1, 1)
  layout = state_lib.layout(trainable(abstract_params(spec.module)), tx, mesh)
  wanted = ("params", "step")
  with checkpoint.Checkpointer(workdir, async_save=False) as ckpt:
    state, _ = ckpt.restore(step, abstract_state={k: layout.abstract[k] for k in wanted},
                            shardings={k: layout.shardings[k] for k in wanted}, partial=True)
  models = as_models(spec, distributed.host_local(state["params"]),
                     _load_copy(spec, int(config.seed)), tok.load_tokenizer(spec.tokenizer_dir))
  return models, int(state["step"])
