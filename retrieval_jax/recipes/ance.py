"""ANCE (Xiong et al. 2020): hard negatives from an ANN index of the model being trained.

A dual encoder (`recipes.contrastive.build_contrastive`, one shared tower) whose negatives
come from a `recipes.ance_refresh.NegativeRefresher`: BM25 negatives during the warm-up, then
every `negatives.refresh_every` steps the corpus and the training queries are encoded with a snapshot
of the parameters, searched with ScaNN (or exactly) `negatives.depth` deep, positives (and,
optionally, near-positive scores) removed, and the new pool swapped in - in a background
thread while training goes on (`negatives.refresh_mode='async'`), or blocking (`'sync'`).
FirstP or MaxP documents (`data.max_passages`) in training, mining and evaluation alike.
On several processes each encodes and searches its shard of the corpus (`mine_shard`) and the
shards' top lists are merged (`index.mining.pool_from_shards`), in both modes.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

import jax

from retrieval_jax import distributed, encode, sharding
from retrieval_jax.index import mining
from retrieval_jax.index.scann_index import ScannConfig
from retrieval_jax.recipes import ance_refresh
from retrieval_jax.recipes import base, contrastive, dual_encoder
from retrieval_jax.recipes.contrastive import restore_eval_models  # noqa: F401  (DPR's towers)

INDEXES = ("scann", "exact")


def check_negatives(config: Any) -> None:
  """ANCE's own keys, each error naming it (the rest is checked by `contrastive`)."""
  negatives = config.negatives
  if negatives.source != "ann":
    raise ValueError(f"negatives.source={negatives.source!r}: ANCE mines 'ann' negatives")
  if negatives.num < 1:
    raise ValueError(f"negatives.num={negatives.num} must be >= 1: ANCE trains on mined "
                     "negatives")
  if negatives.depth < 1:
    raise ValueError(f"negatives.depth={negatives.depth} must be >= 1")
  if negatives.index not in INDEXES:
    raise ValueError(f"negatives.index={negatives.index!r} must be one of {INDEXES}")
  if negatives.refresh_mode not in ance_refresh.MODES:
    raise ValueError(f"negatives.refresh_mode={negatives.refresh_mode!r} must be one of "
                     f"{ance_refresh.MODES}")
  if negatives.refresh_every < 0:
    raise ValueError(f"negatives.refresh_every={negatives.refresh_every} must be >= 0")
  if negatives.encode_batch_size < 1:
    raise ValueError(f"negatives.encode_batch_size={negatives.encode_batch_size} must be >= 1")


def mine_shard(params: Any, step: int, *, ctx: contrastive.TrainingData, tokenizer: Any,
               progress: bool, mesh: jax.sharding.Mesh | None = None
               ) -> mining.ShardCandidates:
  """Encodes the training queries and this process's shard of the corpus with `params` (host
  or device arrays of this process) and searches the shard; no communication.

  Runs in the refresher's thread in async mode: it uses its own tokenizer copy and only reads
  `ctx`. The forward is sharded over `mesh` (default: all of this process's devices, rows over
  a `data` mesh). Every process encodes all the training queries (a few percent of the corpus'
  tokens) so that no exchange is needed before the merge.
  """
  del step  # the refresher records it
  config, negatives = ctx.config, ctx.config.negatives
  query_encoder, passage_encoder = dual_encoder.tower_encoders(ctx.dual, params, tokenizer,
                                                               ctx.spec.model_dir, ctx.prepare)
  batch, length = int(negatives.encode_batch_size), int(config.train.passage_max_length)
  query_emb = encode.encode_texts(query_encoder, ctx.data.query_texts,
                                  max_length=int(config.train.query_max_length),
                                  batch_size=batch, mesh=mesh, progress=progress,
                                  desc="refresh queries")
  per_doc = int(config.data.get("max_passages", 1))
  shard = encode.encode_document_shard(
      passage_encoder, ctx.dataset.doc_texts, max_length=length, max_passages=per_doc,
      dim=query_emb.shape[1], batch_size=batch, mesh=mesh, progress=progress,
      desc="refresh corpus" if per_doc == 1 else "refresh passages")
  scann = negatives.scann
  return mining.shard_candidates(
      query_emb, shard.embeddings, ctx.data, int(negatives.depth), index=negatives.index,
      scann_config=ScannConfig(num_leaves=scann.num_leaves,
                               num_leaves_to_search=scann.num_leaves_to_search,
                               reorder_k=scann.reorder_k),
      passage_doc=None if shard.doc_of is None else shard.doc_of + shard.start,
      shard=(shard.start, shard.stop),
      with_positive_scores=negatives.get("false_negative_margin") is not None)


def ann_negatives(ctx: contrastive.TrainingData) -> tuple[dict, list]:
  """The refresher and the batcher's view of it. -> (batcher kwargs, hooks)."""
  config, negatives = ctx.config, ctx.config.negatives
  warmup_pool = contrastive.negative_pool(config, ctx.data, ctx.workdir,
                                         depth=negatives.bm25_depth)
  initial = ance_refresh.MinedNegatives(
      warmup_pool, ance_refresh.NOT_MINED, "bm25", int(negatives.num), int(config.seed),
      negatives.get("top_k"), ctx.dataset.query_rows)
  mode = negatives.refresh_mode
  refresh_mesh = sharding.refresh_mesh(config)
  # A private tokenizer: HF fast tokenizers set truncation on the shared backend at each call.
  mine = functools.partial(mine_shard, ctx=ctx, tokenizer=copy.deepcopy(ctx.tokenizer),
                           progress=bool(config.train.progress) and mode == "sync",
                           mesh=refresh_mesh)
  merge = functools.partial(mining.pool_from_shards, data=ctx.data,
                            depth=int(negatives.depth),
                            false_negative_margin=negatives.get("false_negative_margin"))
  several = distributed.is_multiprocess()
  if several:
    # The parameters come whole to every host (a collective, in the training thread); the
    # forward places them on the mesh it runs on.
    prepare = distributed.host_local
  elif refresh_mesh is not None:
    # A copy on the refresh devices, which the next (donating) step cannot overwrite.
    prepare = functools.partial(jax.device_put, device=sharding.replicated(refresh_mesh))
  else:
    prepare = None
  refresher = ance_refresh.NegativeRefresher(
      mine, lambda: initial, every=int(negatives.refresh_every), total_steps=ctx.total_steps,
      mode=mode, first=negatives.get("first_refresh"),
      mine_at_start=bool(negatives.get("mine_at_start", False)), merge=merge, prepare=prepare,
      # Several processes: a refresh is installed once every process has mined its shard.
      agree=distributed.all_true if several else None, refresh_mesh=refresh_mesh)
  return {"negative_sets": refresher.current}, [refresher]


def build(config: Any, workdir: str | os.PathLike, mesh: jax.sharding.Mesh) -> base.Recipe:
  """Everything the loop needs to train ANCE as `config` says."""
  check_negatives(config)
  recipe = contrastive.build_contrastive(config, workdir, mesh, name="ance",
                                         negatives=ann_negatives)
  recipe.info["refresh_steps"] = recipe.hooks[0].schedule
  return recipe
