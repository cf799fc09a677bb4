"""Dual encoders trained with an in-batch softmax: the model, train state and step of DPR-style recipes.

A `DualEncoder` is one `TextEncoder` architecture used as a query tower and a passage tower,
either with separate parameters (`params = {"query": ..., "passage": ...}`, DPR) or one shared
set (`params = {"shared": ...}`, ANCE, Contriever). The train state is a plain dict

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
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from retrieval_jax import distributed, encode, grad_cache, losses, sharding
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import hf
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, abstract_params, init_params
from retrieval_jax.models.pooling import PoolingConfig

TOWERS = ("query", "passage")
# Independent PRNG streams, folded from the config seed: one per purpose (DESIGN.md).
RNG_STREAMS = {"init": 0, "dropout": 1}


def rng_stream(seed: int, purpose: str) -> jax.Array:
  """The key of one purpose (`init`, `dropout`) for a run seed."""
  return jax.random.fold_in(jax.random.key(seed), RNG_STREAMS[purpose])


@dataclasses.dataclass(frozen=True)
class DualEncoder:
  """A query tower and a passage tower of one architecture, shared or not."""
  model: TextEncoder
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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Where a recipe's encoder comes from, resolved from `config.model` without loading weights."""
  encoder: EncoderConfig
  pooling: PoolingConfig
  model_dir: pathlib.Path | None  # None: random initialisation
  tokenizer_dir: pathlib.Path


def _flag(value: Any, name: str) -> bool | None:
  text = str(value).lower()
  if text not in ("auto", "true", "false"):
    raise ValueError(f"{name}={value!r} must be auto, true or false")
  return None if text == "auto" else text == "true"


def model_spec(model_config: Any) -> ModelSpec:
  """Reads the encoder's shape and pooling from `config.model` (only config files are read).

  Raises:
    ValueError: Naming the `model.*` key that is wrong or missing.
  """
  dtype = getattr(jnp, model_config.dtype, None)
  if dtype is None:
    raise ValueError(f"model.dtype={model_config.dtype!r} is not a jax.numpy dtype")
  overrides: dict[str, Any] = dict(dtype=dtype, remat=bool(model_config.get("remat", False)))
  if model_config.get("dropout") is not None:
    overrides.update(hidden_dropout=float(model_config.dropout),
                     attention_dropout=float(model_config.dropout))
  normalize = _flag(model_config.normalize, "model.normalize")
  pooling_mode = None if model_config.pooling == "auto" else model_config.pooling
  if model_config.name == "random":
    if not model_config.get("tokenizer"):
      raise ValueError("model.name='random' needs model.tokenizer (a directory, hub id or minilm)")
    tokenizer_dir = hf.resolve_model_dir(model_config.tokenizer)
    vocab_size = len(tok.load_tokenizer(tokenizer_dir))
    shape = dict(model_config.random)
    encoder = EncoderConfig(vocab_size=vocab_size, max_position_embeddings=512, **shape,
                            **overrides)
    pooling = PoolingConfig(mode=pooling_mode or "cls", normalize=bool(normalize))
    return ModelSpec(encoder, pooling, None, tokenizer_dir)
  model_dir = hf.resolve_model_dir(model_config.name)
  config_file = model_dir / "config.json"
  if not config_file.exists():
    raise ValueError(f"model.name={model_config.name!r}: {config_file} not found")
  hf_config = json.loads(config_file.read_text())
  declared = hf.read_sentence_transformers_pooling(model_dir) or PoolingConfig()
  encoder = EncoderConfig.from_hf(
      hf_config, with_pooler=hf.checkpoint_has_pooler(model_dir, hf_config), **overrides)
  pooling = declared
  if pooling_mode is not None:
    pooling = dataclasses.replace(pooling, mode=pooling_mode)
  if normalize is not None:
    pooling = dataclasses.replace(pooling, normalize=normalize)
  tokenizer_dir = hf.resolve_model_dir(model_config.tokenizer) if model_config.get(
      "tokenizer") else model_dir
  return ModelSpec(encoder, pooling, model_dir, tokenizer_dir)


def initial_tower_params(spec: ModelSpec, seed: int) -> Any:
  """One tower's starting parameters (host numpy): the checkpoint's, or a seeded random init."""
  model = TextEncoder(spec.encoder, spec.pooling)
  if spec.model_dir is None:
    return jax.tree_util.tree_map(
        np.asarray, sharding.unbox(init_params(model, rng_stream(seed, "init"))))
  encoder, params, _ = hf.load_pretrained(
      spec.model_dir, dtype=spec.encoder.dtype, remat=spec.encoder.remat,
      hidden_dropout=spec.encoder.hidden_dropout,
      attention_dropout=spec.encoder.attention_dropout)
  expected = jax.tree_util.tree_structure(sharding.unbox(abstract_params(model)))
  if jax.tree_util.tree_structure(params) != expected:
    raise ValueError(f"parameters of {spec.model_dir} do not match the model built from "
                     f"config.model (pooling {spec.pooling}); encoder {encoder}")
  return params


def state_shardings(dual: DualEncoder, tx: optax.GradientTransformation, mesh) -> dict:
  """Params by the logical-axis rules, Adam moments like their params, the rest replicated."""
  tower = sharding.param_shardings(abstract_params(dual.model), mesh)
  params = {name: tower for name in dual.towers}
  abstract = abstract_state(dual, tx)
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], params,
                              transform_non_params=lambda _: sharding.replicated(mesh))
  return dict(params=params, opt_state=opt, step=sharding.replicated(mesh),
              rng=sharding.replicated(mesh))


def abstract_state(dual: DualEncoder, tx: optax.GradientTransformation) -> dict:
  """Shapes and dtypes of the train state, without allocating it."""
  tower = sharding.unbox(abstract_params(dual.model))
  params = {name: tower for name in dual.towers}
  return dict(params=params, opt_state=jax.eval_shape(tx.init, params),
              step=jax.ShapeDtypeStruct((), jnp.int32),
              rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))


def init_state(dual: DualEncoder, tx: optax.GradientTransformation, tower_params: Any,
               seed: int, shardings: dict) -> dict:
  """The step-0 state on the mesh: every tower starts from `tower_params` (DPR: both from BERT)."""
  params = {name: tower_params for name in dual.towers}
  params = jax.device_put(params, shardings["params"])
  # jit with out_shardings: the Adam moments are created sharded, never whole on one device.
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  rng = jax.random.key_data(rng_stream(seed, "dropout"))
  return dict(params=params, opt_state=opt_state,
              step=jax.device_put(jnp.int32(0), shardings["step"]),
              rng=jax.device_put(rng, shardings["rng"]))


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


def train_step(state: dict, batch: dict, *, dual: DualEncoder, tx: optax.GradientTransformation,
               schedule: optax.Schedule, loss_config: Any, dropout: bool = True
               ) -> tuple[dict, dict]:
  """One optimizer update; a non-finite loss or gradient leaves params and moments unchanged.

  Returns:
    (new state, metrics): float32 scalars `loss`, `accuracy`, `positive_logit_mean`,
    `grad_norm`, `lr` (the rate this update used) and `finite` (1.0, or 0.0 when the update
    was skipped; the training loop stops on it).
  """
  step = state["step"]
  rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step) if dropout else None
  (loss, metrics), grads = contrastive_loss_and_grads(dual, loss_config, state["params"], batch,
                                                      rng)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # Keep the last good parameters rather than spreading NaNs: the loop stops on `finite`, and
  # the state it would save (it does not) or inspect is still the one before the bad batch.
  keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = dict(params=keep(params, state["params"]),
                   opt_state=keep(opt_state, state["opt_state"]), step=step + 1,
                   rng=state["rng"])
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                 lr=jnp.asarray(schedule(step), jnp.float32),
                 finite=finite.astype(jnp.float32))
  return new_state, metrics


def tower_encoders(dual: DualEncoder, params: dict, tokenizer, model_dir: pathlib.Path | None
                   ) -> tuple[encode.LoadedEncoder, encode.LoadedEncoder]:
  """(query encoder, passage encoder) for `encode.encode_texts`, evaluation in inference mode."""
  model = dual.model
  return tuple(encode.LoadedEncoder(model, dual.tower_params(params, tower), tokenizer,
                                    model_dir or pathlib.Path("."))
               for tower in TOWERS)


def export(dual: DualEncoder, params: dict, out_dir: str | pathlib.Path, tokenizer_dir,
           max_seq_length: int) -> list[pathlib.Path]:
  """HF + sentence-transformers directories: `encoder/`, or `query_encoder/` and
  `passage_encoder/` for separate towers.

  Every process calls it (gathering parameters that span processes is a collective); process
  0 writes, and the others return an empty list.
  """
  out_dir = pathlib.Path(out_dir)
  names = {"shared": "encoder", "query": "query_encoder", "passage": "passage_encoder"}
  written = []
  for tower in dual.towers:
    host = distributed.host_local(params[tower])
    if jax.process_index() != 0:
      continue
    written.append(hf.save_pretrained(out_dir / names[tower], dual.model.encoder, host,
                                      pooling=dual.model.pooling, tokenizer_dir=tokenizer_dir,
                                      max_seq_length=max_seq_length))
  return written
