"""Dual encoders trained with an in-batch softmax: the model, train state and step of DPR-style recipes.

A `DualEncoder` is one architecture (a `TextEncoder`, or the `BowMlp` baseline of Chang et al.
2020) used as a query tower and a passage tower, either with separate parameters
(`params = {"query": ..., "passage": ...}`, DPR) or one shared set (`params = {"shared": ...}`,
ANCE, Contriever). The train state is a plain dict

  {"params": ..., "opt_state": ..., "step": int32, "rng": uint32 key data}

so Orbax saves it as is. The step is a pure function of (state, batch); `retrieval_jax.train`
compiles it with shardings over the mesh.

Batch layout (from `retrieval_jax.data.pairs.PairBatcher`), B rows sharded over `data`:
  query_input_ids, query_attention_mask: [B, Lq]
  passage_input_ids, passage_attention_mask: [B, G, Lp], slot 0 the positive, 1.. negatives;
    MaxP: [B, G, N, Lp], each document's N passages (a document scores its best passage)
Passages are flattened to [B * G, Lp] in query-major order, so query i's positive is row i * G
and every device keeps its own queries' passages; the loss then scores each query against all
B * G passages of the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import optax

from retrieval_jax import distributed, encode, files, grad_cache, losses
from retrieval_jax.models import bow_mlp, hf, registry
from retrieval_jax.models import encoder as encoder_lib
from retrieval_jax.models.encoder import TextEncoder
from retrieval_jax.recipes import state as state_lib

TOWERS = grad_cache.TOWERS
rng_stream = state_lib.rng_stream


@dataclasses.dataclass(frozen=True)
class DualEncoder:
  """A query tower and a passage tower of one architecture, shared or not."""
  model: TextEncoder | bow_mlp.BowMlp
  shared: bool

  @property
  def towers(self) -> tuple[str, ...]:
    """The keys of `params`: ("shared",) or ("query", "passage")."""
    return ("shared",) if self.shared else TOWERS

  def tower_params(self, params: dict, tower: str) -> Any:
    if tower not in TOWERS:
      raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
    return params["shared"] if self.shared else params[tower]

  def embed(self, params: dict, inputs: tuple[jax.Array, jax.Array], rng: jax.Array | None,
            tower: str) -> jax.Array:
    """[n, d] embeddings of `inputs = (input_ids, attention_mask)` by `tower`.

    Dropout is on exactly when `rng` is given (training), off otherwise.
    """
    input_ids, attention_mask = inputs
    return self.model.apply({"params": self.tower_params(params, tower)}, input_ids,
                            attention_mask, deterministic=rng is None,
                            rngs=None if rng is None else {"dropout": rng})


ModelSpec = registry.TransformerSpec | registry.BowMlpSpec


def model_spec(model_config: Any, files_dir: str | None = None) -> ModelSpec:
  """The tower `config.model` names (the registry's `transformer` or `bow_mlp` type);
  `files_dir`: a run's `workdir/model` to read it from (`registry.build`)."""
  spec = registry.build(model_config, files_dir=files_dir)
  if not isinstance(spec, ModelSpec):
    raise ValueError(f"model.type={model_config.get('type')!r}: a dual encoder needs a "
                     "'transformer' or 'bow_mlp' model")
  return spec


def abstract_params(model: TextEncoder | bow_mlp.BowMlp) -> Any:
  """One tower's boxed parameter shapes (each module type initialises its own way)."""
  if isinstance(model, bow_mlp.BowMlp):
    return bow_mlp.abstract_params(model)
  return encoder_lib.abstract_params(model)


def initial_tower_params(spec: ModelSpec, seed: int) -> Any:
  """One tower's starting parameters (host numpy): the checkpoint's, or a seeded random init."""
  return spec.initial_params(rng_stream(seed, "init"))


def state_layout(dual: DualEncoder, tx: optax.GradientTransformation, mesh
                 ) -> state_lib.StateLayout:
  """Params by the logical-axis rules (one tree per tower), moments like their params."""
  tower = abstract_params(dual.model)
  return state_lib.layout({name: tower for name in dual.towers}, tx, mesh)


def state_shardings(dual: DualEncoder, tx: optax.GradientTransformation, mesh) -> dict:
  return state_layout(dual, tx, mesh).shardings


def abstract_state(dual: DualEncoder, tx: optax.GradientTransformation) -> dict:
  """Shapes and dtypes of the train state, without allocating it."""
  tower = abstract_params(dual.model)
  return state_lib.abstract_state({name: tower for name in dual.towers}, tx)


def init_state(dual: DualEncoder, tx: optax.GradientTransformation, tower_params: Any,
               seed: int, shardings: dict) -> dict:
  """The step-0 state on the mesh: every tower starts from `tower_params` (DPR: both from BERT)."""
  return state_lib.init_state(shardings, tx, {name: tower_params for name in dual.towers},
                              rng_stream(seed, "dropout"))


def contrastive_loss_and_grads(dual: DualEncoder, loss_config: Any, params: dict, batch: dict,
                               rng: jax.Array | None):
  """((loss, metrics), grads) of the in-batch softmax over the global batch.

  With `loss_config.grad_cache`, through `grad_cache.grad_cache_loss_and_grads` (one chunk's
  activations at a time); otherwise one `jax.value_and_grad` over the whole batch.
  """
  query = (batch["query_input_ids"], batch["query_attention_mask"])
  group = batch["passage_input_ids"].shape[1]
  length = batch["passage_input_ids"].shape[-1]
  passage = (batch["passage_input_ids"].reshape(-1, length),
             batch["passage_attention_mask"].reshape(-1, length))
  num_queries = query[0].shape[0]
  per_doc = batch["passage_input_ids"].shape[2] if batch["passage_input_ids"].ndim == 4 else 1
  mask = None
  if per_doc > 1:  # MaxP: [B, G, N, L], a document's N passages; a missing one is all padding
    mask = passage[1][:, 0] > 0
  if not loss_config.get("in_batch", True):
    # ANCE's loss: each query against its own group only (positive + its hard negatives).
    own = (jnp.arange(num_queries * group * per_doc)[None, :] // (group * per_doc)
           == jnp.arange(num_queries)[:, None])
    mask = own if mask is None else own & mask[None, :]
  loss_fn = functools.partial(
      losses.in_batch_softmax_loss,
      positive_index=jnp.arange(num_queries, dtype=jnp.int32) * group,
      scale=float(loss_config.scale), symmetric=bool(loss_config.symmetric),
      passage_mask=mask, passages_per_doc=per_doc)
  if loss_config.grad_cache:
    return grad_cache.grad_cache_loss_and_grads(
        dual.embed, loss_fn, params, query, passage, chunk_size=int(loss_config.chunk_size),
        rng=rng, has_aux=True)

  def full_batch_loss(params):
    query_emb = dual.embed(params, query, grad_cache.chunk_rng(rng, "query", 0), "query")
    passage_emb = dual.embed(params, passage, grad_cache.chunk_rng(rng, "passage", 0), "passage")
    return loss_fn(query_emb, passage_emb)

  return jax.value_and_grad(full_batch_loss, has_aux=True)(params)


def train_step(state: dict, frozen: dict, batch: dict, *, dual: DualEncoder,
               tx: optax.GradientTransformation, schedule: optax.Schedule, loss_config: Any,
               dropout: bool = True) -> tuple[dict, dict]:
  """One optimizer update; a non-finite loss or gradient leaves params and moments unchanged.

  Returns:
    (new state, metrics): float32 scalars `loss`, `accuracy`, `positive_logit_mean`,
    `grad_norm`, `lr` (the rate this update used) and `finite` (1.0, or 0.0 when the update
    was skipped; the training loop stops on it).
  """
  del frozen  # a dual encoder reads no frozen model
  rng = state_lib.step_rng(state, dropout)
  (loss, metrics), grads = contrastive_loss_and_grads(dual, loss_config, state["params"], batch,
                                                      rng)
  new_state, update_metrics = state_lib.apply_gradients(state, grads, loss, tx=tx,
                                                        schedule=schedule)
  return new_state, dict(metrics, **update_metrics)


def tower_encoders(dual: DualEncoder, params: dict, tokenizer, model_dir: pathlib.Path | None,
                   prepare: tuple[Any, Any] = (None, None)
                   ) -> tuple[encode.LoadedEncoder, encode.LoadedEncoder]:
  """(query encoder, passage encoder) for `encode.encode_texts`, evaluation in inference mode.

  `prepare`: each tower's input format (`encode.LoadedEncoder.prepare`), None: plain.
  """
  model = dual.model
  return tuple(encode.LoadedEncoder(model, dual.tower_params(params, tower), tokenizer,
                                    model_dir or pathlib.Path("."), prepare=tower_prepare)
               for tower, tower_prepare in zip(TOWERS, prepare))


def export(dual: DualEncoder, params: dict, out_dir: str | pathlib.Path, tokenizer_dir,
           max_seq_length: int, *, similarity: str | None = None,
           prompts: dict[str, str] | None = None) -> list[Any]:
  """HF + sentence-transformers directories: `encoder/`, or `query_encoder/` and
  `passage_encoder/` for separate towers. A BoW-MLP tower has no HF architecture: its
  directories hold `bow_mlp.save`'s safetensors, JSON config and tokenizer instead.

  Every process calls it (gathering parameters that span processes is a collective); process
  0 writes, and the others return an empty list.

  Args:
    dual: The towers' architecture.
    params: The train state's params (one tree per tower).
    out_dir: Where the directories go: local, or remote (`gs://...`, see
      `hf.save_pretrained`).
    tokenizer_dir: The tokenizer files to copy into each directory.
    max_seq_length: The sentence-transformers max_seq_length.
    similarity: sentence-transformers' similarity; None: cosine for normalized towers, dot
      otherwise (`hf.sentence_transformers_config`).
    prompts: Query / document prefixes the recipe trained with (None: none).

  Returns:
    The directories written (`hf.save_pretrained`'s paths: pathlib locally, epath remotely).
  """
  out_dir = files.as_path(out_dir)
  names = {"shared": "encoder", "query": "query_encoder", "passage": "passage_encoder"}
  written = []
  for tower in dual.towers:
    host = distributed.host_local(params[tower])
    if jax.process_index() != 0:
      continue
    if isinstance(dual.model, bow_mlp.BowMlp):  # no HF architecture: its own format
      written.append(bow_mlp.save(out_dir / names[tower], dual.model.config, host,
                                  tokenizer_dir=tokenizer_dir, max_seq_length=max_seq_length,
                                  similarity=similarity, prompts=prompts))
      continue
    written.append(hf.save_pretrained(out_dir / names[tower], dual.model.encoder, host,
                                      pooling=dual.model.pooling, tokenizer_dir=tokenizer_dir,
                                      max_seq_length=max_seq_length, similarity=similarity,
                                      prompts=prompts))
  return written
