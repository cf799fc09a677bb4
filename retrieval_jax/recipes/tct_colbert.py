"""TCT-ColBERT (Lin, Yang & Lin, RepL4NLP 2021): in-batch distillation from a ColBERT teacher.

A single-vector student (one shared encoder, mean pooling after TCT's 4-token prefix,
`data.tct_format`) learns the teacher's in-batch ranking: the frozen ColBERT teacher scores
every (query, passage) pair of the global batch with MaxSim, and the loss is

  KL(softmax(teacher / tau) || softmax(student))     over all B * G passages, per query

(`losses.kl_distillation_loss`, tau = `loss.temperature`), optionally plus the student's
in-batch cross-entropy (`loss.ce_weight`). The teacher is a `base.FrozenInput`: a ColBERT
training workdir, a ColBERT directory or hub id (`colbert-ir/colbertv2.0`), or `random`
(smoke runs); no gradient reaches it and it has no optimizer state. Negatives: BM25
(`negatives.source=bm25`), or mined once at the start by the student's own index with ANCE's
miner (`ann`, the HN variants). `loss.type=ce` trains without a teacher (the `hn` variant).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from retrieval_jax import distributed, files, losses
from retrieval_jax.data import colbert_format as cf
from retrieval_jax.data import tct_format
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import colbert_files, hf
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, abstract_params, init_params
from retrieval_jax.models.heads import TokenProjectionConfig
from retrieval_jax.recipes import ance, base, colbert, contrastive, dpr, dual_encoder
from retrieval_jax.recipes import state as state_lib

LOSSES = ("kd", "ce")


def student_format(config: Any, tokenizer: Any) -> tct_format.TctFormat:
  return tct_format.tct_format(tokenizer, int(config.train.query_max_length),
                               int(config.train.passage_max_length))


class Teacher:
  """The frozen ColBERT teacher `config.teacher` names: module, format, and a loader."""

  def __init__(self, teacher_config: Any, student_tokenizer: Any):
    name = str(teacher_config.name)
    self.source = name
    if name == "random":
      encoder = EncoderConfig(vocab_size=len(student_tokenizer), max_position_embeddings=512,
                              **dict(teacher_config.random))
      self.settings = colbert_files.ColbertSettings(dim=int(teacher_config.random_dim))
      self.module = TextEncoder(encoder,
                                token_projection=TokenProjectionConfig(self.settings.dim))
      self.tokenizer = student_tokenizer
      seed = int(teacher_config.seed)
      self._load = lambda: jax.tree_util.tree_map(
          np.asarray, nn.meta.unbox(init_params(self.module, jax.random.key(seed))))
    elif _is_workdir(name):
      from retrieval_jax import run_config  # pylint: disable=g-import-not-at-top
      run = run_config.load_config(name)
      if run.get("recipe") != "colbert":
        raise ValueError(f"teacher.name={name!r} is a {run.get('recipe')!r} workdir, not a "
                         "ColBERT one")
      spec = dual_encoder.model_spec(run.model, files.as_path(name) / contrastive.MODEL_FILES)
      self.module = spec.module
      self.settings = colbert_files.settings_from_config(run.model)
      self.tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
      step = teacher_config.get("step")

      def load_checkpoint():
        models, _ = colbert.restore_eval_models(run, name, step)
        return jax.tree_util.tree_map(np.asarray, models.get(colbert.ROLE).params)

      self._load = load_checkpoint
    else:
      encoder, self.settings, model_dir = colbert_files.describe(name)
      self.module = TextEncoder(encoder,
                                token_projection=TokenProjectionConfig(self.settings.dim))
      self.tokenizer = tok.load_tokenizer(model_dir)
      self._load = lambda: colbert_files.load(name)[1]
    if teacher_config.get("doc_max_length"):  # None: the teacher's own
      self.settings = dataclasses.replace(self.settings,
                                          doc_max_length=int(teacher_config.doc_max_length))
    if self.tokenizer.get_vocab() != student_tokenizer.get_vocab():
      raise ValueError(f"teacher.name={name!r}: the teacher's vocabulary differs from the "
                       "student's (both read one tokenisation of each batch)")
    self.format = cf.colbert_format(
        self.tokenizer, query_marker=self.settings.query_marker,
        doc_marker=self.settings.doc_marker, query_length=self.settings.query_length,
        doc_max_length=self.settings.doc_max_length,
        attend_to_mask_tokens=self.settings.attend_to_mask_tokens,
        mask_punctuation=self.settings.mask_punctuation)

  def frozen_input(self) -> base.FrozenInput:
    return base.FrozenInput(abstract=abstract_params(self.module), load=self._load,
                            source=self.source)


def _is_workdir(name: str) -> bool:
  if "://" not in name and not os.path.isdir(name):
    return False
  root = files.as_path(name)
  return (root / "config.json").exists() and (root / "checkpoints").exists()


def teacher_scores(teacher: TextEncoder, params: Any, batch: dict) -> jax.Array:
  """[B, B * G] MaxSim of every query against every passage of the global batch (no
  dropout, no gradient)."""
  return jax.lax.stop_gradient(colbert.batch_scores(teacher, params, batch, None, False,
                                                    prefix="teacher_"))


def train_step(state: dict, frozen: dict, batch: dict, *, dual: dual_encoder.DualEncoder,
               tx: optax.GradientTransformation, schedule: optax.Schedule, loss_config: Any,
               teacher: TextEncoder, dropout: bool = True) -> tuple[dict, dict]:
  """One student update on KL(teacher || student) over the global batch (+ CE)."""
  rng = state_lib.step_rng(state, dropout)
  targets = teacher_scores(teacher, frozen["teacher"], batch)
  num, group = batch["passage_input_ids"].shape[:2]
  query = (batch["query_input_ids"], batch["query_attention_mask"])
  length = batch["passage_input_ids"].shape[-1]
  passage = (batch["passage_input_ids"].reshape(-1, length),
             batch["passage_attention_mask"].reshape(-1, length))
  positive = jax.numpy.arange(num, dtype=jax.numpy.int32) * group
  rngs = (None, None) if rng is None else tuple(jax.random.split(rng))

  def loss_fn(params):
    q = dual.embed(params, query, rngs[0], "query")
    p = dual.embed(params, passage, rngs[1], "passage")
    logits = losses.similarity_logits(q, p, float(loss_config.scale))
    kd = losses.kl_distillation_loss(logits, targets, float(loss_config.temperature),
                                     student_temperature=1.0)
    ce, metrics = losses.in_batch_softmax_loss(q, p, positive_index=positive,
                                               scale=float(loss_config.scale))
    weight = float(loss_config.ce_weight)
    agree = jax.numpy.mean((jax.numpy.argmax(logits, -1) == jax.numpy.argmax(targets, -1))
                           .astype(jax.numpy.float32))
    return kd + weight * ce, dict(metrics, kd=kd, ce=ce, teacher_agreement=agree)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  new_state, update_metrics = state_lib.apply_gradients(state, grads, loss, tx=tx,
                                                        schedule=schedule)
  return new_state, dict(metrics, **update_metrics)


def _prepare(config: Any, tokenizer: Any):
  return tct_format.preparers(tokenizer, student_format(config, tokenizer))


def as_models(dual, params, tokenizer, spec, config) -> base.EvalModels:
  query, passage = dual_encoder.tower_encoders(dual, params, tokenizer, spec.model_dir,
                                               _prepare(config, tokenizer))
  return base.EvalModels(query=query, passage=passage)


def export(dual, params, out_dir, spec, config) -> list[Any]:
  """`out_dir/encoder/`: the student as a HF directory (no sentence-transformers pooling
  module: ST cannot skip TCT's prefix) and `tct_format.json`, the input format."""
  host = distributed.host_local(params["shared"])
  if jax.process_index() != 0:
    return []
  directory = files.as_path(out_dir) / "encoder"
  written = hf.save_pretrained(directory, dual.model.encoder, host,
                               tokenizer_dir=spec.tokenizer_dir)
  student = student_format(config, tok.load_tokenizer(spec.tokenizer_dir))
  fmt = tct_format.format_file(student, normalize=bool(dual.model.pooling.normalize))
  (files.as_path(directory) / tct_format.FORMAT_FILE).write_text(json.dumps(fmt, indent=2))
  return [written]


def _check(config: Any) -> None:
  loss = config.loss
  if loss.type not in LOSSES:
    raise ValueError(f"loss.type={loss.type!r} is not one of {LOSSES}")
  if not config.model.get("shared_towers", False):
    raise ValueError("model.shared_towers=False: the TCT student is one encoder")
  if config.model.pooling != "mean" or not config.model.get("pooling_skip_first"):
    raise ValueError("model.pooling must be 'mean' with model.pooling_skip_first=4 (TCT's "
                     "prefix)")
  if loss.get("grad_cache"):
    raise ValueError("loss.grad_cache: not available for TCT-ColBERT")
  if loss.type == "kd" and not config.teacher.get("name"):
    raise ValueError("teacher.name is not set: a ColBERT workdir, directory or hub id (the "
                     "cpu variant: --config.teacher.name=<a colbert.py:cpu workdir>)")
  if loss.type == "kd" and float(loss.temperature) <= 0:
    raise ValueError(f"loss.temperature={loss.temperature} must be positive")
  if config.negatives.source not in ("bm25", "ann"):
    raise ValueError(f"negatives.source={config.negatives.source!r} must be 'bm25' or 'ann'")
  if int(config.data.get("max_passages", 1)) != 1:
    raise ValueError("data.max_passages: TCT-ColBERT documents are FirstP (truncated)")


def build(config: Any, workdir: str | os.PathLike, mesh: jax.sharding.Mesh) -> base.Recipe:
  """Everything the loop needs to train a TCT-ColBERT student as `config` says."""
  _check(config)
  student_tokenizer = tok.load_tokenizer(dual_encoder.model_spec(config.model).tokenizer_dir)
  teacher = Teacher(config.teacher, student_tokenizer) if config.loss.type == "kd" else None
  fmt = student_format(config, student_tokenizer)
  step = (dual_encoder.train_step if teacher is None else
          functools.partial(train_step, teacher=teacher.module))

  def batcher(inner, tokenizer):
    return tct_format.TctPairBatcher(
        inner, fmt, None if teacher is None else teacher.format,
        sep_id=int(tokenizer.sep_token_id), pad_id=int(tokenizer.pad_token_id),
        pad_to_multiple_of=inner.pad_to_multiple_of)

  towers = contrastive.Towers(
      train_step=step, as_models=as_models, export=export, batcher=batcher,
      lengths=lambda _: tct_format.batcher_lengths(fmt, teacher and teacher.format),
      frozen=(None if teacher is None else lambda *_: {"teacher": teacher.frozen_input()}),
      prepare=_prepare)
  negatives = ance.ann_negatives if config.negatives.source == "ann" else dpr.bm25_negatives
  if config.negatives.source == "ann":
    ance.check_negatives(config)
  recipe = contrastive.build_contrastive(config, workdir, mesh, name="tct_colbert",
                                         negatives=negatives, towers=towers)
  if teacher is not None:
    recipe.info["teacher"] = teacher.source
  return recipe


def restore_eval_models(config: Any, workdir: str | os.PathLike, step: int | None = None
                        ) -> tuple[base.EvalModels, int]:
  """(the student of a checkpoint of `workdir` in its input format, its step)."""
  return contrastive.restore_eval_models(config, workdir, step, as_models=as_models)
