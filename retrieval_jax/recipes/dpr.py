"""DPR (Karpukhin et al. 2020): two towers, in-batch softmax plus BM25 hard negatives.

The contrastive recipe (`recipes.contrastive.build_contrastive`) with DPR's negative source: a
BM25 pool of the training split, mined once per workdir, resampled every epoch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from retrieval_jax.index import mining
from retrieval_jax.recipes import base, contrastive
from retrieval_jax.recipes.contrastive import TrainingData, restore_eval_models  # noqa: F401


def bm25_negatives(ctx: TrainingData) -> tuple[dict, list]:
  """DPR's negatives: a fixed BM25 pool, resampled every epoch. -> (batcher kwargs, hooks)."""
  config, num_negatives = ctx.config, int(ctx.config.negatives.num)
  if not num_negatives:
    return {"negatives_fn": None}, []
  pool = contrastive.negative_pool(config, ctx.data, ctx.workdir)
  return {"negatives_fn": _epoch_sampler(pool, ctx)}, []


def _epoch_sampler(pool: mining.NegativePool, ctx: TrainingData):
  """epoch -> the training examples' negatives drawn from `pool` (seeded by the epoch)."""
  config, rows = ctx.config, ctx.dataset.query_rows
  num_negatives, seed, top_k = (int(config.negatives.num), int(config.seed),
                                config.negatives.get("top_k"))

  def negatives_for_epoch(epoch: int) -> np.ndarray:
    return mining.sample_negatives(pool, num_negatives, seed=seed, epoch=epoch, top_k=top_k)[rows]

  return negatives_for_epoch


def pooled_negatives(ctx: TrainingData) -> tuple[dict, list]:
  """Negatives another run mined (`negatives.pool_from`: a workdir whose latest checkpoint
  holds a mined pool, e.g. TCT-ColBERT's `tct_hn` run), resampled every epoch: how HN+
  fine-tunes its teacher on the student's negatives. -> (batcher kwargs, hooks)."""
  from retrieval_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import ance_refresh  # pylint: disable=g-import-not-at-top

  config = ctx.config
  source = config.negatives.get("pool_from")
  step = checkpoint.latest_step(source) if source else None
  host = None
  if step is not None:
    with checkpoint.Checkpointer(source, async_save=False) as ckpt:
      host = ckpt.restore_host(step)
  if not host or "candidates" not in host:
    raise ValueError(f"negatives.pool_from={source!r}: not a workdir whose checkpoints hold "
                     "mined negatives (an ANCE or TCT-ColBERT hard-negative run)")
  pool = ance_refresh.pool_from_host(host, mining.empty_pool(ctx.data))
  return {"negatives_fn": _epoch_sampler(pool, ctx)}, []


def build(config: Any, workdir: str | os.PathLike, mesh: jax.sharding.Mesh) -> base.Recipe:
  """Everything the loop needs to train DPR as `config` says."""
  if config.negatives.source != "bm25":
    raise ValueError(f"negatives.source={config.negatives.source!r}: DPR mines 'bm25' negatives")
  return contrastive.build_contrastive(config, workdir, mesh, name="dpr",
                                       negatives=bm25_negatives)
