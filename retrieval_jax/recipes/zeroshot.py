"""Zero-shot: a pretrained encoder (or none, for BM25) evaluated without training.

An evaluation-only recipe: `config.model` names the encoder (a HF directory, hub id or
`minilm`), used as both the `query` and the `passage` model of every evaluator (an exported
TCT-ColBERT student with its own query and document formats: `encode.load_towers`); for
`maxsim` evaluators it names a ColBERT directory (stanford or PyLate layout, e.g.
`colbert-ir/colbertv2.0`), the `colbert` role.
"""

from __future__ import annotations

import logging
from typing import Any

import jax.numpy as jnp

from retrieval_jax import encode, encode_tokens, evaluators, options
from retrieval_jax.recipes import base

logger = logging.getLogger(__name__)

TRAINS = False


def eval_models(config: Any) -> base.EvalModels:
  """The pretrained model `config.model` names, in the roles the evaluators need."""
  needed = {role for evaluator in evaluators.build_all(config) for role in evaluator.requires}
  model = config.model
  models = base.EvalModels()
  if "colbert" in needed:
    models.extra["colbert"] = encode_tokens.load_token_encoder(model.name,
                                                               dtype=getattr(jnp, model.dtype))
    logger.info("ColBERT model %s, %s", model.name, models.extra["colbert"].format)
  if not needed & {"query", "passage"}:
    return models
  models.query, models.passage = encode.load_towers(
      model.name, None if model.pooling == "auto" else model.pooling,
      normalize=options.auto_bool(model.normalize, "model.normalize"),
      dtype=getattr(jnp, model.dtype))
  logger.info("model %s from %s, %s%s", model.name, models.query.model_dir, models.query.pooling,
              ", TCT-ColBERT's input format" if models.query.prepare else "")
  return models
