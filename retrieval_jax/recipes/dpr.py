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
  seed, top_k, rows = int(config.seed), config.negatives.get("top_k"), ctx.dataset.query_rows

  def negatives_for_epoch(epoch: int) -> np.ndarray:
    return mining.sample_negatives(pool, num_negatives, seed=seed, epoch=epoch, top_k=top_k)[rows]

  return {"negatives_fn": negatives_for_epoch}, []


def build(config: Any, workdir: str | os.PathLike, mesh: jax.sharding.Mesh) -> base.Recipe:
  """Everything the loop needs to train DPR as `config` says."""
  if config.negatives.source != "bm25":
    raise ValueError(f"negatives.source={config.negatives.source!r}: DPR mines 'bm25' negatives")
  return contrastive.build_contrastive(config, workdir, mesh, name="dpr",
                                       negatives=bm25_negatives)
