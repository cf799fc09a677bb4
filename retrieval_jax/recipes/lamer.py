"""LameR (Shen et al. 2023): an evaluation-only recipe around a generator and BM25.

Nothing is trained. `eval_models` builds the generator `config.generator` describes, wrapped
in the on-disk completion cache, as the `generator` role of the `lamer` evaluators; a HyDE
evaluator also gets `config.model`'s encoder as its `query` role.

`config.generator` keys:
  backend            `jax` (in process: `models.causal_lm`) or `http` (OpenAI-compatible)
  model              jax: `smollm2`, a GGUF file, a HF directory or hub id, `random`;
                     http: the server's model name
  tokenizer          for `random` only: the vocabulary (e.g. `minilm`)
  batch_size, max_prompt_tokens            jax: rows decoded at once, the prompt cap
  max_batch_prompts  jax: at most this many prompts a batch (memory: each is cached whole)
  base_url, api_key_env, timeout, max_retries, concurrency   http
  extra_body         http: a JSON object of fields added to every request (a server's own
                     sampling settings, e.g. llama.cpp's `{"repeat_penalty": 1}`)
  cache              the SQLite file of completions (None: `$RETRIEVAL_JAX_CACHE`, default
                     `~/.cache/retrieval_jax`, `/generations.sqlite`); `off` for none
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax.numpy as jnp

from retrieval_jax import encode, evaluators, options, sharding
from retrieval_jax.generation import cache as cache_lib
from retrieval_jax.generation.jax_backend import JaxBackend
from retrieval_jax.generation.openai_http import OpenAIBackend
from retrieval_jax.models import causal_lm
from retrieval_jax.recipes import base

logger = logging.getLogger(__name__)

TRAINS = False
BACKENDS = ("jax", "http")


def make_generator(generator: Any, mesh=None):
  """The backend `config.generator` describes, behind the completion cache."""
  kind = generator.get("backend", "jax")
  if kind == "jax":
    lm = causal_lm.load(generator.model, tokenizer=generator.get("tokenizer"))
    logger.info("generator %s in process: %d layers, %d heads (%d key/value)", lm.name,
                lm.config.num_layers, lm.config.num_heads, lm.config.num_kv_heads)
    backend = JaxBackend(lm, batch_size=generator.get("batch_size", 8),
                         max_prompt_tokens=generator.get("max_prompt_tokens", 2048),
                         max_batch_prompts=generator.get("max_batch_prompts"), mesh=mesh)
  elif kind == "http":
    if not generator.get("base_url"):
      raise ValueError("generator.base_url is not set (the backend is http)")
    backend = OpenAIBackend(generator.base_url, generator.model,
                            extra_body=_json_object(generator.get("extra_body"),
                                                    "generator.extra_body"),
                            api_key_env=generator.get("api_key_env", "OPENAI_API_KEY"),
                            timeout=generator.get("timeout", 120.0),
                            max_retries=generator.get("max_retries", 6),
                            concurrency=generator.get("concurrency", 8))
  else:
    raise ValueError(f"generator.backend={kind!r} is not one of {BACKENDS}")
  path = generator.get("cache")
  if path == "off":
    return backend
  path = path or str(causal_lm.cache_root() / "generations.sqlite")
  store = cache_lib.CompletionCache(path)
  logger.info("completions cached in %s (%d entries)", path, len(store))
  return cache_lib.CachedBackend(backend, store)


def _json_object(text: str | None, key: str) -> dict:
  """`text` as a JSON object ({} when empty); ValueError naming `key` otherwise."""
  if not text:
    return {}
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{key}={text!r} is not JSON: {e}") from None
  if not isinstance(value, dict):
    raise ValueError(f"{key}={text!r} is not a JSON object")
  return value


def eval_models(config: Any) -> base.EvalModels:
  """The generator (and HyDE's encoder) the `lamer` evaluators need."""
  needed = {role for evaluator in evaluators.build_all(config) for role in evaluator.requires}
  models = base.EvalModels()
  if "generator" in needed:
    mesh = sharding.mesh_from_config(config) if config.get("mesh") else None
    models.extra["generator"] = make_generator(config.generator, mesh)
  if needed & {"query", "passage"}:
    model = config.model
    models.query, models.passage = encode.load_towers(
        model.name, None if model.pooling == "auto" else model.pooling,
        normalize=options.auto_bool(model.normalize, "model.normalize"),
        dtype=getattr(jnp, model.dtype))
  return models
