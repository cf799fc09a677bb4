"""ColBERT (Khattab & Zaharia 2020): late interaction over per-token vectors, MaxSim.

One encoder (`TextEncoder` with a token head, `model.token_dim` wide) embeds queries in the
[Q] format with [MASK] augmentation and documents in the [D] format with punctuation dropped
(`data.colbert_format`). A query scores a document by the sum over its tokens of the best
cosine with any document token (`losses.maxsim_scores`). Training batches are DPR's
(`recipes.contrastive` with BM25 triples), the loss `loss.type`:
`pairwise` (ColBERT v1's softmax over the query's own d+ and d-), `nway_in_batch` (ColBERTv2
with in-batch negatives) or `in_batch` (PyLate's contrastive loss over the global batch).
The evaluators get the `colbert` role (`encode_tokens.TokenEncoder`); the export is a
PyLate / stanford ColBERT directory (`models.colbert_files`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from retrieval_jax import losses
from retrieval_jax.data import colbert_format as cf
from retrieval_jax.encode_tokens import TokenEncoder
from retrieval_jax.models import colbert_files
from retrieval_jax.models.encoder import TextEncoder
from retrieval_jax.recipes import base, contrastive, dpr, dual_encoder
from retrieval_jax.recipes import state as state_lib

ROLE = "colbert"


def format_from_config(model_config: Any, tokenizer: Any) -> cf.ColbertFormat:
  """The input format `config.model.colbert` describes, for `tokenizer`."""
  colbert = model_config.colbert
  return cf.colbert_format(
      tokenizer, query_marker=colbert.query_marker, doc_marker=colbert.doc_marker,
      query_length=int(colbert.query_length), doc_max_length=int(colbert.doc_max_length),
      attend_to_mask_tokens=bool(colbert.attend_to_mask_tokens),
      mask_punctuation=bool(colbert.mask_punctuation))


def token_vectors(model: TextEncoder, params: Any, ids, attention, keep,
                  rng: jax.Array | None) -> jax.Array:
  """[n, l, dim] token vectors; dropout on exactly when `rng` is given."""
  return model.apply({"params": params}, ids, attention, keep, deterministic=rng is None,
                     rngs=None if rng is None else {"dropout": rng},
                     method=TextEncoder.token_vectors)


def batch_vectors(model: TextEncoder, params: Any, batch: dict, prefix: str,
                  rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """(token vectors [n, l, dim], keep mask [n, l]) of the batch entries `<prefix>_input_ids`,
  `_attention_mask`, `_keep_mask` (passages [B, G, l] are flattened query-major)."""
  arrays = [batch[f"{prefix}_{key}"] for key in ("input_ids", "attention_mask", "keep_mask")]
  arrays = [a.reshape(-1, a.shape[-1]) for a in arrays]
  return token_vectors(model, params, *arrays, rng), arrays[2]


def batch_scores(model: TextEncoder, params: Any, batch: dict, rng: jax.Array | None,
                 own_group_only: bool, prefix: str = "") -> jax.Array:
  """MaxSim scores of a ColBERT batch: [B, G] (each query against its own passages) when
  `own_group_only`, else [B, B * G] against every passage of the global batch. `prefix`:
  of the batch keys (`teacher_` for TCT-ColBERT's teacher inputs)."""
  rngs = (None, None) if rng is None else tuple(jax.random.split(rng))
  queries, _ = batch_vectors(model, params, batch, f"{prefix}query", rngs[0])
  docs, keep = batch_vectors(model, params, batch, f"{prefix}passage", rngs[1])
  if not own_group_only:
    return losses.maxsim_scores(queries, docs, keep)
  num, group, length = batch[f"{prefix}passage_input_ids"].shape
  docs = docs.reshape(num, group, length, -1)
  sims = jnp.einsum("bid,bgjd->bgij", queries.astype(jnp.float32), docs.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)
  keep = keep.astype(bool).reshape(num, group, 1, length)
  return jnp.sum(jnp.max(jnp.where(keep, sims, -jnp.inf), axis=-1), axis=-1)


def train_step(state: dict, frozen: dict, batch: dict, *, dual: dual_encoder.DualEncoder,
               tx: optax.GradientTransformation, schedule: optax.Schedule, loss_config: Any,
               dropout: bool = True) -> tuple[dict, dict]:
  """One update of the ColBERT encoder on the late-interaction loss `loss_config.type`."""
  del frozen
  rng = state_lib.step_rng(state, dropout)
  mode = loss_config.type
  group = batch["passage_input_ids"].shape[1]

  def loss_fn(params):
    scores = batch_scores(dual.model, params["shared"], batch, rng, mode == "pairwise")
    return losses.late_interaction_loss(scores, group, mode)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  new_state, update_metrics = state_lib.apply_gradients(state, grads, loss, tx=tx,
                                                        schedule=schedule)
  return new_state, dict(metrics, **update_metrics)


def as_models(dual: dual_encoder.DualEncoder, params: dict, tokenizer: Any,
              spec: dual_encoder.ModelSpec, config: Any) -> base.EvalModels:
  """The `colbert` role: the trained encoder with its input format."""
  encoder = TokenEncoder(dual.model, params["shared"], tokenizer,
                         format_from_config(config.model, tokenizer), spec.model_dir)
  return base.EvalModels(extra={ROLE: encoder})


def export(dual: dual_encoder.DualEncoder, params: dict, out_dir, spec: dual_encoder.ModelSpec,
           config: Any) -> list[Any]:
  """`out_dir/colbert/`: a ColBERT directory PyLate and stanford ColBERT load."""
  from retrieval_jax import distributed, files  # pylint: disable=g-import-not-at-top

  host = distributed.host_local(params["shared"])
  if jax.process_index() != 0:
    return []
  return [colbert_files.save(files.as_path(out_dir) / "colbert", dual.model.encoder, host,
                             tokenizer_dir=spec.tokenizer_dir,
                             settings=colbert_files.settings_from_config(config.model))]


def _check(config: Any) -> None:
  if not config.model.get("shared_towers", False):
    raise ValueError("model.shared_towers=False: ColBERT has one encoder for queries and "
                     "documents (set model.shared_towers=True)")
  if config.model.get("token_dim") is None:
    raise ValueError("model.token_dim is None: ColBERT needs its token head width (128)")
  if config.loss.type not in losses.LATE_INTERACTION_LOSSES:
    raise ValueError(f"loss.type={config.loss.type!r} is not one of "
                     f"{losses.LATE_INTERACTION_LOSSES}")
  if config.loss.type == "pairwise" and config.negatives.num < 1:
    raise ValueError("loss.type='pairwise' needs negatives.num >= 1 (a softmax over the "
                     "positive alone is constant)")
  if config.loss.get("grad_cache"):
    raise ValueError("loss.grad_cache: not available for ColBERT's late interaction")
  if int(config.data.get("max_passages", 1)) != 1:
    raise ValueError("data.max_passages: ColBERT documents are FirstP (truncated)")


def _lengths(config: Any) -> tuple[int, int]:
  colbert = config.model.colbert
  # One token less: the marker goes in after [CLS] (data.colbert_format).
  return int(colbert.query_length) - 1, int(colbert.doc_max_length) - 1


def towers(config: Any) -> contrastive.Towers:
  """ColBERT's step, evaluation role, export and batch format for `build_contrastive`."""

  def batcher(inner, tokenizer):
    return cf.ColbertPairBatcher(inner, format_from_config(config.model, tokenizer),
                                 inner.pad_to_multiple_of)

  return contrastive.Towers(train_step=train_step, as_models=as_models, roles=(ROLE,),
                            export=export, batcher=batcher, lengths=_lengths)


def build(config: Any, workdir: str | os.PathLike, mesh: jax.sharding.Mesh) -> base.Recipe:
  """Everything the loop needs to train ColBERT as `config` says."""
  _check(config)
  sources = {"bm25": dpr.bm25_negatives, "pool": dpr.pooled_negatives}
  if config.negatives.source not in sources:
    raise ValueError(f"negatives.source={config.negatives.source!r}: ColBERT trains on "
                     f"{sorted(sources)} triples ('pool': negatives.pool_from, another run's "
                     "mined negatives)")
  return contrastive.build_contrastive(config, workdir, mesh, name="colbert",
                                       negatives=sources[config.negatives.source],
                                       towers=towers(config))


def restore_eval_models(config: Any, workdir: str | os.PathLike, step: int | None = None
                        ) -> tuple[base.EvalModels, int]:
  """(the `colbert` role of a checkpoint of `workdir`, its step)."""
  return contrastive.restore_eval_models(config, workdir, step, as_models=as_models)
