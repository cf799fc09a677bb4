"""Zero-shot: a pretrained encoder (or none, for BM25) evaluated without training.

An evaluation-only recipe: `config.model` names the encoder (a HF directory, hub id or
`minilm`), used as both the `query` and the `passage` model of every evaluator.
"""

from __future__ import annotations

import logging
from typing import Any

import jax.numpy as jnp

from retrieval_jax import encode, evaluators, options
from retrieval_jax.recipes import base

logger = logging.getLogger(__name__)

TRAINS = False


def eval_models(config: Any) -> base.EvalModels:
  """The pretrained encoder `config.model` names, unless every evaluator needs no model."""
  if not any(evaluator.requires for evaluator in evaluators.build_all(config)):
    return base.EvalModels()
  model = config.model
  encoder = encode.load_encoder(
      model.name, None if model.pooling == "auto" else model.pooling,
      normalize=options.auto_bool(model.normalize, "model.normalize"),
      dtype=getattr(jnp, model.dtype))
  logger.info("model %s from %s, %s", model.name, encoder.model_dir, encoder.pooling)
  return base.EvalModels(query=encoder, passage=encoder)
