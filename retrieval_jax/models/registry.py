"""The model registry: `config.model.type` names a model, `build(config.model)` resolves it.

A builder reads only configuration files (no weights) and returns a spec with the module,
where its initial weights and tokenizer come from, `abstract_params()` (shapes and logical
axis names) and `initial_params(rng)`. Types: `transformer` (`TextEncoder`: the BERT/RoBERTa
encoder with its heads) and `bow_mlp` (`BowMlp`: Chang et al. 2020's bag-of-words baseline);
the RetroMAE decoder and the causal LM register here when their recipes land.

`config.model` keys of the `transformer` type: `name` (HF directory, hub id, `minilm` or
`random`), `pooling`, `normalize`, `dtype`, and optionally `dropout`, `remat`, `tokenizer`,
`random` (the shape of a random encoder), `mlm_head`, `missing_mlm_head` (`error`, or
`random`: a checkpoint without that head gets a random one, logged), `token_dim` (ColBERT's
head width),
`mlp_widths` (a projection MLP), `pooling_skip_first` (mean pooling from that position on),
`projection_dim` (a linear projection of the pooled vector to that width, randomly
initialised unless the checkpoint's sentence-transformers Dense module has that width).

`config.model` keys of the `bow_mlp` type: `tokenizer` (required: its vocabulary sizes the
embedding table), `bow` (`embed_dim`, `hidden_widths`, `activation`, `output_dim`),
`normalize`, `dtype`, `dropout` (None: 0.1); `pooling` must be `auto` or `mean`, and the
Transformer's heads (`token_dim`, `mlm_head`, `mlp_widths`, `projection_dim`,
`pooling_skip_first`) unset. Its initial weights are always random.

A training run keeps what its spec was read from (config files and the tokenizer, no weights)
in `workdir/model/` (`save_model_files`); `build(config.model, files_dir=workdir/model)`
resolves the same spec from there, so evaluating a checkpoint never fetches the base model.
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

from retrieval_jax import files, options
from retrieval_jax.models import bow_mlp, hf
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, abstract_params, init_params
from retrieval_jax.models.heads import MLPProjectionConfig, TokenProjectionConfig
from retrieval_jax.models.pooling import PoolingConfig

_BUILDERS: dict[str, Callable[[Any], Any]] = {}
BowMlpSpec = bow_mlp.BowMlpSpec  # the `bow_mlp` type's spec (its module's file defines it)


def register(type_name: str):
  """Decorator: `builder(model_config) -> spec` becomes `config.model.type=type_name`."""
  def wrap(builder):
    _BUILDERS[type_name] = builder
    return builder
  return wrap


def types() -> list[str]:
  return sorted(_BUILDERS)


def build(model_config: Any, files_dir: str | None = None):
  """The spec of the model `model_config.type` (default `transformer`) names.

  Args:
    model_config: `config.model`.
    files_dir: A directory `save_model_files` wrote (local or remote): read the model's
      config files and tokenizer from there instead of from `model.name` / `model.tokenizer`.

  Raises:
    ValueError: Naming the `model.*` key that is wrong, or the unknown type and the known.
  """
  type_name = model_config.get("type", "transformer")
  if type_name not in _BUILDERS:
    raise ValueError(f"model.type={type_name!r} is not a registered model; known: {types()}")
  if files_dir is None:
    return _BUILDERS[type_name](model_config)
  return _BUILDERS[type_name](model_config, files_dir=files_dir)


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
  # A checkpoint without the masked-LM head `mlm_head` asks for: `error` or `random`.
  missing_mlm_head: str = "error"

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
        self.model_dir, mlm_head=self.mlm_head,
        missing_mlm_head="skip" if self.missing_mlm_head == "random" else "error",
        dtype=self.encoder.dtype,
        remat=self.encoder.remat, hidden_dropout=self.encoder.hidden_dropout,
        attention_dropout=self.encoder.attention_dropout)
    fresh = [head for head in ("token_head", "mlp_head")  # no HF checkpoint holds these
             if getattr(self, {"token_head": "token_projection",
                               "mlp_head": "mlp_projection"}[head]) is not None]
    if self.mlm_head and "mlm_head" not in params:  # missing_mlm_head="random" (logged)
      fresh.append("mlm_head")
    if self.pooling.projection_dim and "head" not in params:  # model.projection_dim, no Dense
      fresh.append("head")
    if fresh:
      random = random_init()
      params.update({head: random[head] for head in fresh})
    expected = jax.tree_util.tree_structure(nn.meta.unbox(self.abstract_params()))
    if jax.tree_util.tree_structure(params) != expected:
      raise ValueError(f"parameters of {self.model_dir} do not match the model built from "
                       f"config.model (pooling {self.pooling}); encoder {encoder}")
    return params


def _dtype(model_config: Any):
  dtype = getattr(jnp, model_config.dtype, None)
  if dtype is None:
    raise ValueError(f"model.dtype={model_config.dtype!r} is not a jax.numpy dtype")
  return dtype


def _projection_dim(model_config: Any) -> int | None:
  """`model.projection_dim`: the pooled vector's linear projection width, or None."""
  value = model_config.get("projection_dim")
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"model.projection_dim={value!r} must be a positive integer (or None)")
  return int(value)


def _missing_mlm_head(model_config: Any) -> str:
  value = str(model_config.get("missing_mlm_head", "error"))
  if value not in ("error", "random"):
    raise ValueError(f"model.missing_mlm_head={value!r} is not 'error' or 'random'")
  return value


def _heads(model_config: Any) -> dict:
  token_dim = model_config.get("token_dim")
  widths = model_config.get("mlp_widths")
  return dict(
      token_projection=None if token_dim is None else TokenProjectionConfig(dim=int(token_dim)),
      mlm_head=bool(model_config.get("mlm_head", False)),
      missing_mlm_head=_missing_mlm_head(model_config),
      mlp_projection=None if not widths else MLPProjectionConfig(tuple(int(w) for w in widths)))


def _skipping(pooling: PoolingConfig, model_config: Any) -> PoolingConfig:
  """`model.pooling_skip_first` (TCT-ColBERT's prefix) applied to the pooling."""
  skip = int(model_config.get("pooling_skip_first") or 0)
  if not skip:
    return pooling
  if pooling.mode != "mean":
    raise ValueError(f"model.pooling_skip_first={skip} needs model.pooling='mean' (the "
                     f"pooling is {pooling.mode!r})")
  return dataclasses.replace(pooling, skip_first=skip)


SNAPSHOT_FILE = "retrieval_jax_model.json"
TOKENIZER_SUBDIR = "tokenizer"
# Config files of a HF / sentence-transformers directory that shape the spec (no weights).
_CONFIG_FILES = ("config.json", "modules.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json")


def _read_snapshot(local: pathlib.Path, type_name: str) -> dict:
  """The `save_model_files` record in `local`, checked to be of the type being built."""
  snapshot = json.loads((local / SNAPSHOT_FILE).read_text())
  saved = snapshot.get("type", "transformer")  # files of older runs are all Transformers'
  if saved != type_name:
    raise ValueError(f"model.type={type_name!r}, but {local} holds the files of a {saved!r} "
                     "model")
  return snapshot


def _copy_tokenizer(tokenizer_dir: pathlib.Path, out: pathlib.Path) -> None:
  tokenizer = out / TOKENIZER_SUBDIR
  tokenizer.mkdir(exist_ok=True)
  for name in hf.TOKENIZER_FILES:
    if (tokenizer_dir / name).exists():
      (tokenizer / name).write_bytes((tokenizer_dir / name).read_bytes())


def save_model_files(spec: TransformerSpec | BowMlpSpec, directory: str) -> None:
  """Writes what `spec` was read from, without weights, to `directory` (local or remote).

  The config files of the model directory (and of its sentence-transformers modules), the
  tokenizer under `tokenizer/`, and `retrieval_jax_model.json` with what only the weights
  tell (whether the checkpoint has a pooler) or only a random encoder has (its vocabulary).
  A BoW-MLP has no model directory: its tokenizer and vocabulary size are all it needs.
  """
  with files.writing_dir(directory) as out:
    if isinstance(spec, BowMlpSpec):
      _copy_tokenizer(spec.tokenizer_dir, out)
      (out / SNAPSHOT_FILE).write_text(json.dumps({
          "type": "bow_mlp", "vocab_size": spec.encoder.vocab_size,
          "bow": spec.encoder.to_json(), "tokenizer_dir": str(spec.tokenizer_dir)}, indent=2))
      return
    if spec.model_dir is not None:
      names = list(_CONFIG_FILES)
      modules = spec.model_dir / "modules.json"
      if modules.exists():
        names += [f"{m['path']}/config.json" for m in json.loads(modules.read_text())
                  if m.get("path")]
      for name in names:
        if (spec.model_dir / name).exists():
          (out / name).parent.mkdir(parents=True, exist_ok=True)
          (out / name).write_bytes((spec.model_dir / name).read_bytes())
    _copy_tokenizer(spec.tokenizer_dir, out)
    (out / SNAPSHOT_FILE).write_text(json.dumps({
        "type": "transformer", "random": spec.model_dir is None,
        "with_pooler": spec.encoder.with_pooler, "vocab_size": spec.encoder.vocab_size,
        "model_dir": None if spec.model_dir is None else str(spec.model_dir),
        "tokenizer_dir": str(spec.tokenizer_dir)}, indent=2))


@register("transformer")
def transformer_spec(model_config: Any, files_dir: str | None = None) -> TransformerSpec:
  """Reads the encoder's shape and pooling from `config.model` (only config files are read).

  Args:
    model_config: `config.model`.
    files_dir: Read config files and tokenizer from this `save_model_files` directory
      instead of resolving `model.name` and `model.tokenizer` (no download).

  Raises:
    ValueError: Naming the `model.*` key that is wrong or missing.
  """
  overrides: dict[str, Any] = dict(dtype=_dtype(model_config),
                                   remat=bool(model_config.get("remat", False)))
  if model_config.get("dropout") is not None:
    overrides.update(hidden_dropout=float(model_config.dropout),
                     attention_dropout=float(model_config.dropout))
  normalize = options.auto_bool(model_config.normalize, "model.normalize")
  pooling_mode = None if model_config.pooling == "auto" else model_config.pooling
  projection_dim = _projection_dim(model_config)
  heads = _heads(model_config)
  snapshot = None
  if files_dir is not None:
    local = files.local_copy(files_dir)
    snapshot = _read_snapshot(local, "transformer")
    snapshot.update(model_dir=None if snapshot["random"] else local,
                    tokenizer_dir=local / TOKENIZER_SUBDIR)
  if snapshot is not None and snapshot["random"]:
    encoder = EncoderConfig(vocab_size=int(snapshot["vocab_size"]), max_position_embeddings=512,
                            **dict(model_config.random), **overrides)
    pooling = PoolingConfig(mode=pooling_mode or "cls", normalize=bool(normalize),
                            projection_dim=projection_dim)
    return TransformerSpec(encoder, _skipping(pooling, model_config), None,
                           snapshot["tokenizer_dir"], **heads)
  if snapshot is None and model_config.name == "random":
    if not model_config.get("tokenizer"):
      raise ValueError("model.name='random' needs model.tokenizer (a directory, hub id or minilm)")
    tokenizer_dir = hf.resolve_model_dir(model_config.tokenizer)
    shape = dict(model_config.random)
    encoder = EncoderConfig(vocab_size=hf.tokenizer_vocab_size(tokenizer_dir),
                            max_position_embeddings=512, **shape, **overrides)
    pooling = PoolingConfig(mode=pooling_mode or "cls", normalize=bool(normalize),
                            projection_dim=projection_dim)
    return TransformerSpec(encoder, _skipping(pooling, model_config), None, tokenizer_dir,
                           **heads)
  model_dir = (snapshot["model_dir"] if snapshot is not None
               else hf.resolve_model_dir(model_config.name))
  config_file = model_dir / "config.json"
  if not config_file.exists():
    raise ValueError(f"model.name={model_config.name!r}: {config_file} not found")
  hf_config = json.loads(config_file.read_text())
  pooling = hf.read_sentence_transformers_pooling(model_dir) or PoolingConfig()
  with_pooler = (bool(snapshot["with_pooler"]) if snapshot is not None
                 else hf.checkpoint_has_pooler(model_dir, hf_config))
  encoder = EncoderConfig.from_hf(hf_config, with_pooler=with_pooler, **overrides)
  if pooling_mode is not None:
    pooling = dataclasses.replace(pooling, mode=pooling_mode)
  if normalize is not None:
    pooling = dataclasses.replace(pooling, normalize=normalize)
  if projection_dim is not None:
    if pooling.projection_dim not in (None, projection_dim):
      raise ValueError(f"model.projection_dim={projection_dim}: {model_dir} already projects to "
                       f"{pooling.projection_dim} (its sentence-transformers Dense module); "
                       "leave model.projection_dim None to keep that projection")
    pooling = dataclasses.replace(pooling, projection_dim=projection_dim)
  if snapshot is not None:
    tokenizer_dir = snapshot["tokenizer_dir"]
  elif model_config.get("tokenizer"):
    tokenizer_dir = hf.resolve_model_dir(model_config.tokenizer)
  else:
    tokenizer_dir = model_dir
  return TransformerSpec(encoder, _skipping(pooling, model_config), model_dir, tokenizer_dir,
                         **heads)


# Keys of the Transformer's heads: a BoW-MLP has none, so setting one is a mistake.
_TRANSFORMER_HEADS = ("token_dim", "mlm_head", "mlp_widths", "projection_dim",
                      "pooling_skip_first")
_BOW_KEYS = ("embed_dim", "hidden_widths", "activation", "output_dim")


def _positive(value: Any, key: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{key}={value!r} must be a positive integer")
  return int(value)


def _bow_config(model_config: Any, vocab_size: int) -> bow_mlp.BowConfig:
  """`config.model` (`bow`, `normalize`, `dropout`, `dtype`) as a `BowConfig`; errors name
  the key."""
  for key in _TRANSFORMER_HEADS:
    if model_config.get(key):
      raise ValueError(f"model.{key}={model_config.get(key)!r} configures a Transformer head; "
                       "model.type='bow_mlp' has none (its width is model.bow.output_dim)")
  if model_config.get("pooling", "auto") not in ("auto", "mean"):
    raise ValueError(f"model.pooling={model_config.pooling!r}: a BoW-MLP averages its tokens; "
                     "use auto or mean")
  bow = dict(model_config.get("bow") or {})
  unknown = sorted(set(bow) - set(_BOW_KEYS))
  if unknown:
    raise ValueError(f"model.bow has unknown keys {unknown}; known: {list(_BOW_KEYS)}")
  fields: dict[str, Any] = {key: _positive(bow[key], f"model.bow.{key}")
                            for key in ("embed_dim", "output_dim") if key in bow}
  if "hidden_widths" in bow:
    widths = bow["hidden_widths"]
    if isinstance(widths, (str, bytes, int)) or not widths:
      raise ValueError(f"model.bow.hidden_widths={widths!r} must be one or more widths")
    fields["hidden_widths"] = tuple(_positive(w, "model.bow.hidden_widths") for w in widths)
  if "activation" in bow:
    if bow["activation"] not in bow_mlp.ACTIVATIONS:
      raise ValueError(f"model.bow.activation={bow['activation']!r} is not one of "
                       f"{sorted(bow_mlp.ACTIVATIONS)}")
    fields["activation"] = bow["activation"]
  dropout = model_config.get("dropout")
  if dropout is not None:
    if not 0.0 <= float(dropout) < 1.0:
      raise ValueError(f"model.dropout={dropout!r} must be in [0, 1)")
    fields["dropout"] = float(dropout)
  normalize = options.auto_bool(model_config.get("normalize", "auto"), "model.normalize")
  return bow_mlp.BowConfig(vocab_size=vocab_size, normalize=bool(normalize),
                           dtype=_dtype(model_config), **fields)


@register("bow_mlp")
def bow_mlp_spec(model_config: Any, files_dir: str | None = None) -> BowMlpSpec:
  """Chang et al. 2020's BoW-MLP tower, its vocabulary from `model.tokenizer`.

  Args:
    model_config: `config.model`.
    files_dir: Read the tokenizer and vocabulary size from this `save_model_files`
      directory instead of resolving `model.tokenizer`.

  Raises:
    ValueError: Naming the `model.*` key that is wrong or missing.
  """
  if files_dir is not None:
    local = files.local_copy(files_dir)
    snapshot = _read_snapshot(local, "bow_mlp")
    return BowMlpSpec(_bow_config(model_config, int(snapshot["vocab_size"])),
                      local / TOKENIZER_SUBDIR)
  if not model_config.get("tokenizer"):
    raise ValueError("model.type='bow_mlp' needs model.tokenizer (a directory, hub id or "
                     "minilm): its vocabulary sizes the token embedding table")
  _bow_config(model_config, 1)  # a bad key fails before the tokenizer is resolved
  tokenizer_dir = hf.resolve_model_dir(model_config.tokenizer)
  return BowMlpSpec(_bow_config(model_config, hf.tokenizer_vocab_size(tokenizer_dir)),
                    tokenizer_dir)
