"""The contrastive dual-encoder recipe that DPR, ANCE (and later TCT-ColBERT) build on.

`build_contrastive` composes `dual_encoder` (towers, state, step), `data.pairs` (examples,
epochs, batches) and a negative source the calling recipe gives (DPR: a BM25 pool resampled
every epoch; ANCE: a refresher over an ANN index). The BM25 pool is mined once per workdir and
cached as `negatives/bm25_<split>.npz`, next to a JSON of what it was mined with.
`restore_eval_models` gives a checkpoint's towers to the evaluators.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable

import jax
from etils import epath

from retrieval_jax import distributed, files, optim, sharding
from retrieval_jax.data import pairs, splits
from retrieval_jax.data import tokenize as tok
from retrieval_jax.data.beir import BeirData
from retrieval_jax.index import mining
from retrieval_jax.models import registry
from retrieval_jax.recipes import base, dual_encoder

logger = logging.getLogger(__name__)


def load_split(data_config: Any, split: str) -> BeirData:
  """One split of `data.name` (a BEIR directory or name, or `synthetic`).

  Raises:
    ValueError: Naming `data.name` and the split when the data cannot be read.
  """
  return splits.load_split(data_config.name, split, dev_fraction=data_config.dev_fraction,
                           tfds_dir=data_config.get("tfds_dir"))


def _pool_settings(config: Any, depth: int) -> dict:
  negatives = config.negatives
  return dict(data=str(config.data.name), split=config.data.train_split,
              dev_fraction=config.data.dev_fraction, depth=int(depth),
              k1=float(negatives.k1), b=float(negatives.b))


def negative_pool(config: Any, data: BeirData, workdir: str | os.PathLike,
                  depth: int | None = None) -> mining.NegativePool:
  """The BM25 pool of the training split: read from the workdir's cache, else mined (and saved).

  Args:
    config: The run's config (`negatives.k1`, `negatives.b`, `data.*`).
    data: The training split.
    workdir: The cache lives in `workdir/negatives/`.
    depth: Candidates per query; default `negatives.depth`.
  """
  settings = _pool_settings(config, config.negatives.depth if depth is None else depth)
  cache = files.as_path(workdir) / "negatives" / f"bm25_{config.data.train_split}.npz"
  meta = cache.with_suffix(".json")
  if cache.exists() and meta.exists() and json.loads(meta.read_text()) == settings:
    pool = mining.load_pool(cache)
    if pool.query_ids == list(data.query_ids):
      logger.info("BM25 negatives from %s", cache)
      return pool
  pool = mining.bm25_negative_pool(data, settings["depth"], k1=settings["k1"], b=settings["b"])
  if jax.process_index() == 0:
    cache.parent.mkdir(parents=True, exist_ok=True)
    mining.save_pool(cache, pool)
    meta.write_text(json.dumps(settings, indent=2))
  return pool


MODEL_FILES = "model"  # workdir/model: the spec's config files and tokenizer (no weights)


def build_model(config: Any, files_dir: str | None = None
                ) -> tuple[dual_encoder.DualEncoder, dual_encoder.ModelSpec]:
  spec = dual_encoder.model_spec(config.model, files_dir)
  return dual_encoder.DualEncoder(spec.module, bool(config.model.shared_towers)), spec


def total_steps(config: Any, steps_per_epoch: int) -> int:
  """`train.num_steps`, else `train.num_epochs` epochs."""
  if config.train.get("num_steps") is not None:
    if config.train.num_steps < 1:
      raise ValueError(f"train.num_steps={config.train.num_steps} must be at least 1")
    return int(config.train.num_steps)
  epochs = config.train.get("num_epochs")
  if epochs is None or epochs < 1:
    raise ValueError(f"train.num_epochs={epochs!r} must be at least 1 (or set train.num_steps)")
  return int(epochs) * steps_per_epoch


def _check_config(config: Any, spec: dual_encoder.ModelSpec) -> None:
  """Shape errors before anything compiles, each naming its key."""
  data_axis, _ = sharding.validate(config, [spec.encoder])
  if config.negatives.num < 0:
    raise ValueError(f"negatives.num={config.negatives.num} must be >= 0")
  if config.data.get("max_passages", 1) < 1:
    raise ValueError(f"data.max_passages={config.data.max_passages} must be >= 1 "
                     "(1: FirstP, N > 1: MaxP over N passages)")
  if not config.loss.get("in_batch", True):
    if config.loss.symmetric:
      raise ValueError("loss.symmetric needs loss.in_batch (the passage -> query direction "
                       "scores each passage against the other queries)")
    if config.negatives.num < 1:
      raise ValueError("loss.in_batch=False needs negatives.num >= 1: a query would be "
                       "scored against its positive alone")
  if config.loss.grad_cache:
    chunk, rows = config.loss.chunk_size, config.train.batch_size
    if chunk < 1 or rows % chunk:
      raise ValueError(f"loss.chunk_size={chunk} must divide train.batch_size={rows} "
                       "(queries and passages are embedded in chunks of it)")
    if chunk % data_axis:
      # Correct either way, but a chunk then lives on a few devices and the others idle.
      logger.warning("loss.chunk_size=%d is not a multiple of the data axis (%d): GradCache "
                     "chunks will not spread over every device", chunk, data_axis)
  for key in ("query_max_length", "passage_max_length"):
    length = config.train[key]
    if not 2 <= length <= spec.encoder.max_position_embeddings:
      raise ValueError(f"train.{key}={length} must be in [2, "
                       f"{spec.encoder.max_position_embeddings}] (the model's positions)")


@dataclasses.dataclass(frozen=True)
class TrainingData:
  """What a recipe's negatives are made from (see `build_contrastive`)."""
  config: Any
  workdir: epath.Path
  data: BeirData                 # the training split
  dataset: pairs.PairDataset     # its (query, positives) examples
  dual: dual_encoder.DualEncoder
  spec: dual_encoder.ModelSpec
  tokenizer: Any
  total_steps: int
  # Each tower's input format (`encode.LoadedEncoder.prepare`): what a miner encodes with.
  prepare: tuple[Any, Any] = (None, None)


def shared_token_lengths(config: Any, dataset: pairs.PairDataset, tokenizer: Any,
                         query_length: int, passage_length: int) -> pairs.TokenLengths | None:
  """Every text's token count for the batcher's padded lengths, on several processes: each
  counts a share of the texts and the shares are gathered (a collective). One process: None
  (it tokenises whole batches)."""
  if not distributed.is_multiprocess():
    return None

  def counted(texts, max_length, max_passages=1):
    start, stop = distributed.shard_range(len(texts), align=1)
    return distributed.allgather_rows(
        pairs.token_lengths(tokenizer, texts[start:stop], max_length, max_passages))

  return pairs.TokenLengths(
      counted(dataset.query_texts, query_length),
      counted(dataset.doc_texts, passage_length, int(config.data.get("max_passages", 1))))


@dataclasses.dataclass(frozen=True)
class Towers:
  """What differs between the recipes `build_contrastive` makes: how the towers are trained,
  what the evaluators get, what is exported, and what the batches look like. The defaults
  are DPR's (single vectors, in-batch softmax, HF export).

  Attributes:
    train_step: (state, frozen, batch, *, dual, tx, schedule, loss_config) -> (state,
      metrics).
    as_models: (dual, host params, tokenizer, spec, config) -> `base.EvalModels`.
    roles: The `EvalModels` roles `as_models` fills.
    export: (dual, params, out_dir, spec, config) -> paths written (every process calls it).
    batcher: (PairBatcher, tokenizer) -> the batcher the loop iterates (e.g. re-formatting
      each batch); default the PairBatcher itself.
    lengths: config -> (query, passage) token caps the PairBatcher tokenises to.
    frozen: (config, mesh) -> `base.FrozenInput`s by name (a teacher).
    prepare: (config, tokenizer) -> each tower's input format (`encode.LoadedEncoder.prepare`)
      for evaluation and mining; default plain tokenisation.
  """
  train_step: Callable[..., Any] = dual_encoder.train_step
  as_models: Callable[..., base.EvalModels] | None = None
  roles: tuple[str, ...] = ("query", "passage")
  export: Callable[..., Any] | None = None
  batcher: Callable[[pairs.PairBatcher, Any], Any] | None = None
  lengths: Callable[[Any], tuple[int, int]] | None = None
  frozen: Callable[[Any, jax.sharding.Mesh], dict[str, base.FrozenInput]] | None = None
  prepare: Callable[[Any, Any], tuple[Any, Any]] | None = None


def _export_towers(dual, params, out_dir, spec, config):
  return dual_encoder.export(dual, params, out_dir, spec.tokenizer_dir, export_max_length(config))


def _train_lengths(config: Any) -> tuple[int, int]:
  return int(config.train.query_max_length), int(config.train.passage_max_length)


def build_contrastive(config: Any, workdir: str | os.PathLike, mesh: jax.sharding.Mesh, *,
                      name: str, negatives: Callable[[TrainingData], tuple[dict, list]],
                      towers: Towers = Towers()) -> base.Recipe:
  """A dual encoder trained on (query, positive, hard negatives) batches, with the hard
  negatives `negatives` gives.

  Args:
    config: The recipe config.
    workdir: The run directory (negative caches go under it).
    mesh: The training mesh.
    name: The recipe's name.
    negatives: TrainingData -> (PairBatcher keyword arguments: `negatives_fn` or
      `negative_sets`; hooks for the loop, e.g. ANCE's refresher).
    towers: The step, evaluation models, export and batch format (default DPR's).
  """
  workdir = files.as_path(workdir)
  dual, spec = build_model(config)
  _check_config(config, spec)
  as_models = towers.as_models or towers_as_models
  export_fn = towers.export or _export_towers
  query_length, passage_length = (towers.lengths or _train_lengths)(config)
  if jax.process_index() == 0:
    registry.save_model_files(spec, workdir / MODEL_FILES)
  data = load_split(config.data, config.data.train_split)
  dataset = pairs.pairs_from_beir(data)
  num_negatives = int(config.negatives.num)
  seed = int(config.seed)
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
  global_batch = int(config.train.batch_size)
  steps = total_steps(config, pairs.steps_per_epoch(len(dataset.query_ids), global_batch))
  prepare = towers.prepare(config, tokenizer) if towers.prepare else (None, None)
  batcher_kwargs, hooks = negatives(TrainingData(config, workdir, data, dataset, dual, spec,
                                                 tokenizer, steps, prepare))
  batcher = pairs.PairBatcher(
      dataset, tokenizer, global_batch=global_batch, num_negatives=num_negatives,
      lengths=shared_token_lengths(config, dataset, tokenizer, query_length, passage_length),
      query_max_length=query_length, passage_max_length=passage_length, seed=seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pad_to_multiple_of=int(config.train.pad_to_multiple_of),
      max_passages=int(config.data.get("max_passages", 1)), **batcher_kwargs)
  if towers.batcher is not None:
    batcher = towers.batcher(batcher, tokenizer)
  tx = optim.optimizer_from_config(config.optim, steps)
  schedule = optim.schedule_from_config(config.optim, steps)
  layout = dual_encoder.state_layout(dual, tx, mesh)
  step_fn = functools.partial(towers.train_step, dual=dual, tx=tx, schedule=schedule,
                              loss_config=config.loss)

  def init_state():
    params = dual_encoder.initial_tower_params(spec, seed)
    return dual_encoder.init_state(dual, tx, params, seed, layout.shardings)

  def eval_models(state):
    # Whole parameters on every host (a collective when they span processes): each process
    # encodes its shard of the corpus with them.
    return as_models(dual, distributed.host_local(state["params"]), tokenizer, spec, config)

  def export(state, out_dir):
    return export_fn(dual, state["params"], out_dir, spec, config)

  abstract = layout.abstract
  info = dict(train_queries=len(dataset.query_ids), corpus=len(dataset.doc_texts),
              steps_per_epoch=batcher.steps_per_epoch, total_steps=steps,
              towers=list(dual.towers), params=base.count_params(abstract["params"]),
              model=str(spec.model_dir or "random"))
  return base.Recipe(name=name, total_steps=steps, batcher=batcher, abstract_state=abstract,
                     state_shardings=layout.shardings,
                     batch_sharding=sharding.batch_sharding(mesh), init_state=init_state,
                     train_step=step_fn, eval_models=eval_models, export=export, info=info,
                     hooks=hooks, eval_roles=towers.roles,
                     frozen=towers.frozen(config, mesh) if towers.frozen else {})


def export_max_length(config: Any) -> int:
  """The sentence-transformers `max_seq_length` of an export: the first retrieval
  evaluator's document length (what the model was measured with), else the training one."""
  for entry in (config.get("evals") or {}).values():
    if entry.get("type") == "retrieval":
      return int(entry.max_length)
  return int(config.train.passage_max_length)


def towers_as_models(dual: dual_encoder.DualEncoder, params: dict, tokenizer: Any,
                     spec: dual_encoder.ModelSpec, config: Any = None) -> base.EvalModels:
  """The `query` and `passage` roles of a dual encoder's (host) params."""
  del config  # single-vector towers need nothing from it
  query, passage = dual_encoder.tower_encoders(dual, params, tokenizer, spec.model_dir)
  return base.EvalModels(query=query, passage=passage)


def restore_eval_models(config: Any, workdir: str | os.PathLike, step: int | None = None, *,
                        as_models: Callable[..., base.EvalModels] = towers_as_models
                        ) -> tuple[base.EvalModels, int]:
  """(the towers of a checkpoint of `workdir` as `EvalModels` (`as_models`), its step)."""
  from retrieval_jax import checkpoint  # pylint: disable=g-import-not-at-top

  model_files = files.as_path(workdir) / MODEL_FILES
  # Older workdirs have no model/: their spec is resolved from config.model again.
  dual, spec = build_model(config, model_files if model_files.exists() else None)
  # The schedule's length does not shape the state; any length the warm-up fits in will do.
  tx = optim.optimizer_from_config(config.optim,
                                   int(config.optim.get("warmup_steps") or 0) + 1)
  # Every device of the job (whatever mesh and process count wrote the checkpoint); the
  # parameters then come to each host whole, to encode its shard of the corpus.
  mesh = sharding.make_mesh(-1, 1)
  wanted = ("params", "step")  # never the optimizer moments
  abstract = dual_encoder.abstract_state(dual, tx)
  shardings = dual_encoder.state_shardings(dual, tx, mesh)
  with checkpoint.Checkpointer(workdir, async_save=False) as ckpt:
    state, _ = ckpt.restore(step, abstract_state={k: abstract[k] for k in wanted},
                            shardings={k: shardings[k] for k in wanted}, partial=True)
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
  models = as_models(dual, distributed.host_local(state["params"]), tokenizer, spec, config)
  return models, int(state["step"])
