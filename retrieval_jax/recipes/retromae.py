"""RetroMAE (Xiao et al. 2022): masked auto-encoder pre-training of a retrieval encoder.

As staoxiao/RetroMAE `src/pretrain/modeling.py`: the encoder reads a block with a
whole-word mask at `data.masking.encoder_ratio` (0.3) and is trained by its own MLM loss; its
last [CLS] state is the sentence vector, from which the one-layer decoder
(`models/retromae_decoder.py`) reconstructs every token of the uncorrupted block, each row
seeing a sampled half of the positions (enhanced decoding, `data/masking.py`). Loss = decoder
cross-entropy + encoder MLM cross-entropy, unweighted, each the mean over its labelled
positions (`loss.type=mlm`: the encoder's loss alone, no decoder). Both use the encoder's
MLM head (tied to its word embeddings); the decoder's content stream goes through the
encoder's embedding module. Texts come from `data.sources`
(`data/text_sources.py`) cut into full blocks of `data.max_length` tokens
(`data/retromae_batches.py`).

State: `params = {"shared": encoder + MLM head, "decoder": the decoder layer}`, both trained.
The evaluation roles are the encoder (its configured pooling; RetroMAE fine-tunes from [CLS]).
The export is the encoder as a HF *ForMaskedLM directory (`export/encoder`, which any recipe
loads as `model.name`) and the decoder's parameters (`export/decoder`). A run whose
`model.name` is a RetroMAE workdir (or its `export/encoder`) continues pre-training from both:
the encoder with its MLM head, and the decoder beside it (`model.decoder`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from retrieval_jax import distributed, files, losses, optim, sharding
from retrieval_jax.data import masking, retromae_batches, text_sources
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import registry, retromae_decoder
from retrieval_jax.models.encoder import TextEncoder, abstract_params
from retrieval_jax.models.retromae_decoder import RetroMAEDecoder
from retrieval_jax.models.transformer import Embeddings
from retrieval_jax.recipes import base, contrastive, dual_encoder
from retrieval_jax.recipes import state as state_lib

DECODER_EXPORT = "decoder"
LOSSES = ("retromae", "mlm")  # `mlm`: the encoder's MLM loss alone (the paper's ablation)


def masking_settings(masking_config: Any) -> masking.MaskingSettings:
  return masking.MaskingSettings(**{k: masking_config[k] for k in masking_config.keys()})


def decoder_params_shape(decoder: RetroMAEDecoder, length: int = 8) -> Any:
  """Boxed abstract parameters of the decoder (logical axis names included)."""
  d = decoder.config.hidden_size
  args = (jnp.zeros((1, d)), jnp.zeros((1, length, d)), jnp.zeros((length, d)),
          jnp.ones((1, length, length), bool))
  return jax.eval_shape(lambda rng: decoder.init(rng, *args)["params"], jax.random.PRNGKey(0))


def _check(config: Any, spec: dual_encoder.ModelSpec) -> None:
  """Errors before anything compiles, each naming its key."""
  sharding.validate(config, [spec.encoder])
  if not spec.mlm_head:
    raise ValueError("model.mlm_head=False: RetroMAE trains through the masked-LM head")
  if not config.model.get("shared_towers", False):
    raise ValueError("model.shared_towers=False: RetroMAE trains one encoder")
  length = int(config.data.max_length)
  if length > spec.encoder.max_position_embeddings:
    raise ValueError(f"data.max_length={length} exceeds the model's "
                     f"{spec.encoder.max_position_embeddings} positions")
  masking_settings(config.data.masking)  # its own errors name data.masking.*
  if config.loss.type not in LOSSES:
    raise ValueError(f"loss.type={config.loss.type!r} is not one of {LOSSES}")


def labelled_positions(labels: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """The first `count` labelled positions of each row and their labels ([b, count] each).

  A row with fewer labels is filled with unlabelled positions (label -100, no loss), so
  `count` must be at least the most labels a row has (`encoder_predictions`).
  """
  positions = jnp.argsort(labels == masking.IGNORE, axis=1, stable=True)[:, :count]
  return positions, jnp.take_along_axis(labels, positions, axis=1)


def encoder_predictions(config: Any) -> int:
  """The most encoder labels a block has: the whole-word mask's token budget."""
  settings = masking_settings(config.data.masking)
  return masking.prediction_budget(int(config.data.max_length), settings.encoder_ratio,
                                   settings.max_predictions)


def losses_and_metrics(params: dict, batch: dict, rng: jax.Array | None, *,
                       model: TextEncoder, decoder: RetroMAEDecoder | None,
                       encoder_predictions: int) -> tuple[jax.Array, dict]:
  """(encoder MLM loss + decoder loss, metrics) of one batch (module docstring); without a
  `decoder` (`loss.type=mlm`), the encoder's loss alone.

  The encoder's vocabulary logits are computed at its `encoder_predictions` labelled
  positions per row only (the reference computes them everywhere and ignores the rest: the
  same loss, at 30% of the cost of the largest matmul).
  """
  deterministic = rng is None
  rngs = [None] * 3 if rng is None else [{"dropout": r} for r in jax.random.split(rng, 3)]
  encoder = params["shared"]
  hidden = model.apply({"params": encoder}, batch["encoder_input_ids"], batch["attention_mask"],
                       deterministic=deterministic, rngs=rngs[0], method=TextEncoder.token_states)
  positions, labels = labelled_positions(batch["encoder_labels"], encoder_predictions)
  encoder_logits = model.apply({"params": encoder},
                               jnp.take_along_axis(hidden, positions[..., None], axis=1),
                               method=TextEncoder.mlm_logits)
  encoder_loss, encoder_metrics = losses.masked_lm_loss(encoder_logits, labels)
  if decoder is None:
    return encoder_loss, {"encoder_loss": encoder_loss,
                          "encoder_accuracy": encoder_metrics["accuracy"]}
  embeddings = encoder["backbone"]["embeddings"]
  tokens = Embeddings(model.encoder).apply(
      {"params": embeddings}, batch["decoder_input_ids"],
      jnp.zeros_like(batch["decoder_input_ids"]), deterministic, rngs=rngs[1])
  states = decoder.apply({"params": params["decoder"]}, hidden[:, 0], tokens,
                         embeddings["position_embeddings"]["embedding"],
                         batch["decoder_visibility"], deterministic, rngs=rngs[2])
  decoder_logits = model.apply({"params": encoder}, states, method=TextEncoder.mlm_logits)
  decoder_loss, decoder_metrics = losses.masked_lm_loss(decoder_logits, batch["decoder_labels"])
  metrics = {"encoder_loss": encoder_loss, "decoder_loss": decoder_loss,
             "encoder_accuracy": encoder_metrics["accuracy"],
             "decoder_accuracy": decoder_metrics["accuracy"]}
  return encoder_loss + decoder_loss, metrics


def train_step(state: dict, frozen: dict, batch: dict, *, model: TextEncoder,
               decoder: RetroMAEDecoder | None, encoder_predictions: int, tx, schedule,
               dropout: bool = True) -> tuple[dict, dict]:
  """One update of encoder, head and decoder; a non-finite loss keeps the state."""
  del frozen
  rng = state_lib.step_rng(state, dropout)
  loss_fn = functools.partial(losses_and_metrics, batch=batch, rng=rng, model=model,
                              decoder=decoder, encoder_predictions=encoder_predictions)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  new_state, update_metrics = state_lib.apply_gradients(state, grads, loss, tx=tx,
                                                        schedule=schedule)
  return new_state, dict(metrics, **update_metrics)


def export_decoder(params: Any, config: Any, out_dir) -> Any:
  """Writes the decoder beside the exported encoder (process 0; `load_params` reads it)."""
  host = distributed.host_local(params)
  if jax.process_index() != 0:
    return None
  return retromae_decoder.save_params(host, config, out_dir)


def decoder_source(config: Any, spec: dual_encoder.ModelSpec):
  """Where the decoder's initial weights come from: a directory, or None for random.

  `model.decoder`: `auto` takes the decoder exported beside the starting encoder (a RetroMAE
  workdir or its `export/encoder`: pre-training continues) and starts a random one otherwise;
  `random` always starts a random one; a path names a decoder export.
  """
  choice = str(config.model.get("decoder", "auto") or "auto")
  if choice == "random":
    return None
  if choice == "auto":
    if spec.model_dir is None:
      return None
    beside = files.as_path(spec.model_dir).parent / DECODER_EXPORT
    return beside if (beside / retromae_decoder.PARAMS_FILE).exists() else None
  path = files.as_path(choice)
  if not (path / retromae_decoder.PARAMS_FILE).exists():
    raise ValueError(f"model.decoder={choice!r}: no {retromae_decoder.PARAMS_FILE} there "
                     "(use auto, random or a RetroMAE decoder export)")
  return path


def build(config: Any, workdir, mesh: jax.sharding.Mesh) -> base.Recipe:
  workdir = files.as_path(workdir)
  dual, spec = contrastive.build_model(config)
  _check(config, spec)
  if jax.process_index() == 0:
    registry.save_model_files(spec, workdir / contrastive.MODEL_FILES)
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
  progress = bool(config.train.get("progress", True)) and jax.process_index() == 0
  streams = text_sources.token_streams(list(config.data.sources or ()), tokenizer,
                                       tfds_dir=config.data.get("tfds_dir"), progress=progress)
  seed = int(config.seed)
  batcher = retromae_batches.BlockMaskBatcher(
      streams, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
      mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
      continuation=retromae_batches.continuation_table(tokenizer),
      block_length=int(config.data.max_length), settings=masking_settings(config.data.masking),
      global_batch=int(config.train.batch_size), seed=seed, process_index=jax.process_index(),
      process_count=jax.process_count())
  steps = contrastive.total_steps(config, batcher.steps_per_epoch)
  tx = optim.optimizer_from_config(config.optim, steps)
  schedule = optim.schedule_from_config(config.optim, steps)
  decoder = RetroMAEDecoder(spec.encoder) if config.loss.type == "retromae" else None
  boxed = {"shared": abstract_params(dual.model)}
  decoder_dir = loaded_decoder = None
  if decoder is not None:
    boxed["decoder"] = decoder_params_shape(decoder)
    decoder_dir = decoder_source(config, spec)
    if decoder_dir is not None:  # read now: a mismatch is reported before compiling
      loaded_decoder = retromae_decoder.load_params(decoder_dir, spec.encoder,
                                                    nn.meta.unbox(boxed["decoder"]))
  layout = state_lib.layout(boxed, tx, mesh)

  def initial_decoder_params():
    if loaded_decoder is not None:
      logging.info("RetroMAE decoder: continuing from %s", decoder_dir)
      return loaded_decoder
    logging.info("RetroMAE decoder: random initialisation")
    length, d = int(config.data.max_length), spec.encoder.hidden_size
    initial = decoder.init(state_lib.rng_stream(seed, "decoder_init"), jnp.zeros((1, d)),
                           jnp.zeros((1, length, d)), jnp.zeros((length, d)),
                           jnp.ones((1, length, length), bool))
    return jax.tree_util.tree_map(np.asarray, nn.meta.unbox(initial["params"]))

  def init_state():
    params = {"shared": dual_encoder.initial_tower_params(spec, seed)}
    if decoder is not None:
      params["decoder"] = initial_decoder_params()
    return state_lib.init_state(layout.shardings, tx, params,
                                state_lib.rng_stream(seed, "dropout"))

  def eval_models(state):
    return contrastive.towers_as_models(dual, distributed.host_local(
        {"shared": state["params"]["shared"]}), tokenizer, spec, config)

  def export(state, out_dir):
    written = dual_encoder.export(dual, {"shared": state["params"]["shared"]}, out_dir,
                                  spec.tokenizer_dir, contrastive.export_max_length(config))
    if decoder is not None:
      decoder_out = export_decoder(state["params"]["decoder"], spec.encoder,
                                   files.as_path(out_dir) / DECODER_EXPORT)
      written += [decoder_out] if decoder_out is not None else []
    return written

  info = dict(sources=list(config.data.sources), tokens=[int(len(s)) for s in streams],
              decoder=str(decoder_dir or "random") if decoder is not None else "none",
              blocks=[int(b) for b in batcher.blocks], steps_per_epoch=batcher.steps_per_epoch,
              total_steps=steps, params=base.count_params(layout.abstract["params"]),
              model=str(spec.model_dir or "random"), loss=str(config.loss.type))
  return base.Recipe(
      name="retromae", total_steps=steps, batcher=batcher, abstract_state=layout.abstract,
      state_shardings=layout.shardings, batch_sharding=sharding.batch_sharding(mesh),
      init_state=init_state,
      train_step=functools.partial(train_step, model=dual.model, decoder=decoder,
                                   encoder_predictions=encoder_predictions(config), tx=tx,
                                   schedule=schedule),
      eval_models=eval_models, export=export, info=info)


def restore_eval_models(config: Any, workdir, step: int | None = None):
  """The trained encoder as the `query` and `passage` roles (only its params and the step)."""
  return contrastive.restore_eval_models(config, workdir, step)
