"""The model registry: `config.model.type` names a model, `build(config.model)` resolves it.

A builder reads only configuration files (no weights) and returns a spec with the module,
where its initial weights and tokenizer come from, `abstract_params()` (shapes and logical
axis names) and `initial_params(rng)`. Today's type is `transformer` (`TextEncoder`: the
BERT/RoBERTa encoder with its heads); the BoW-MLP, the RetroMAE decoder and the causal LM
register here when their recipes land.

`config.model` keys of the `transformer` type: `name` (HF directory, hub id, `minilm` or
`random`), `pooling`, `normalize`, `dtype`, and optionally `dropout`, `remat`, `tokenizer`,
`random` (the shape of a random encoder), `mlm_head`, `token_dim` (ColBERT's head width),
`mlp_widths` (a projection MLP).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from retrieval_jax import options
from retrieval_jax.models import hf
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, abstract_params, init_params
from retrieval_jax.models.heads import MLPProjectionConfig, TokenProjectionConfig
from retrieval_jax.models.pooling import PoolingConfig

_BUILDERS: dict[str, Callable[[Any], Any]] = {}


def register(type_name: str):
  """Decorator: `builder(model_config) -> spec` becomes `config.model.type=type_name`."""
  def wrap(builder):
    _BUILDERS[type_name] = builder
    return builder
  return wrap


def types() -> list[str]:
  return sorted(_BUILDERS)


def build(model_config: Any):
  """The spec of the model `model_config.type` (default `transformer`) names.

  Raises:
    ValueError: Naming the `model.*` key that is wrong, or the unknown type and the known.
  """
  type_name = model_config.get("type", "transformer")
  if type_name not in _BUILDERS:
    raise ValueError(f"model.type={type_name!r} is not a registered model; known: {types()}")
  return _BUILDERS[type_name](model_config)


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
  """A `TextEncoder` resolved from `config.model`, without its weights."""
  encoder: EncoderConfig
  pooling: PoolingConfig
  model_dir: pathlib.Path | None  # None: random initialisation
  tokenizer_dir: pathlib.Path
  token_projection: TokenProjectionConfig | None = None
  mlm_head: bool = False
  mlp_projection: MLPProjectionConfig | None = None

  @property
  def module(self) -> TextEncoder:
    return TextEncoder(self.encoder, self.pooling, self.token_projection, self.mlm_head,
                       self.mlp_projection)

  def abstract_params(self) -> Any:
    """Boxed shapes with logical axis names (for shardings)."""
    return abstract_params(self.module)

  def initial_params(self, rng: jax.Array) -> Any:
    """Host numpy params: the checkpoint's, with `rng` initialising what it lacks (heads a
    checkpoint has no weights for, or everything for a random encoder)."""
    module = self.module

    def random_init():
      return jax.tree_util.tree_map(np.asarray, nn.meta.unbox(init_params(module, rng)))

    if self.model_dir is None:
      return random_init()
    encoder, params, _ = hf.load_pretrained(
        self.model_dir, mlm_head=self.mlm_head, dtype=self.encoder.dtype,
        remat=self.encoder.remat, hidden_dropout=self.encoder.hidden_dropout,
        attention_dropout=self.encoder.attention_dropout)
    fresh = [head for head in ("token_head", "mlp_head")  # no HF checkpoint holds these
             if getattr(self, {"token_head": "token_projection",
                               "mlp_head": "mlp_projection"}[head]) is not None]
    if fresh:
      random = random_init()
      params.update({head: random[head] for head in fresh})
    expected = jax.tree_util.tree_structure(nn.meta.unbox(self.abstract_params()))
    if jax.tree_util.tree_structure(params) != expected:
      raise ValueError(f"parameters of {self.model_dir} do not match the model built from "
                       f"config.model (pooling {self.pooling}); encoder {encoder}")
    return params


def _heads(model_config: Any) -> dict:
  token_dim = model_config.get("token_dim")
  widths = model_config.get("mlp_widths")
  return dict(
      token_projection=None if token_dim is None else TokenProjectionConfig(dim=int(token_dim)),
      mlm_head=bool(model_config.get("mlm_head", False)),
      mlp_projection=None if not widths else MLPProjectionConfig(tuple(int(w) for w in widths)))


@register("transformer")
def transformer_spec(model_config: Any) -> TransformerSpec:
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
  normalize = options.auto_bool(model_config.normalize, "model.normalize")
  pooling_mode = None if model_config.pooling == "auto" else model_config.pooling
  heads = _heads(model_config)
  if model_config.name == "random":
    if not model_config.get("tokenizer"):
      raise ValueError("model.name='random' needs model.tokenizer (a directory, hub id or minilm)")
    tokenizer_dir = hf.resolve_model_dir(model_config.tokenizer)
    shape = dict(model_config.random)
    encoder = EncoderConfig(vocab_size=hf.tokenizer_vocab_size(tokenizer_dir),
                            max_position_embeddings=512, **shape, **overrides)
    pooling = PoolingConfig(mode=pooling_mode or "cls", normalize=bool(normalize))
    return TransformerSpec(encoder, pooling, None, tokenizer_dir, **heads)
  model_dir = hf.resolve_model_dir(model_config.name)
  config_file = model_dir / "config.json"
  if not config_file.exists():
    raise ValueError(f"model.name={model_config.name!r}: {config_file} not found")
  hf_config = json.loads(config_file.read_text())
  pooling = hf.read_sentence_transformers_pooling(model_dir) or PoolingConfig()
  encoder = EncoderConfig.from_hf(
      hf_config, with_pooler=hf.checkpoint_has_pooler(model_dir, hf_config), **overrides)
  if pooling_mode is not None:
    pooling = dataclasses.replace(pooling, mode=pooling_mode)
  if normalize is not None:
    pooling = dataclasses.replace(pooling, normalize=normalize)
  tokenizer_dir = hf.resolve_model_dir(model_config.tokenizer) if model_config.get(
      "tokenizer") else model_dir
  return TransformerSpec(encoder, pooling, model_dir, tokenizer_dir, **heads)
