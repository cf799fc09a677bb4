"""The BoW-MLP tower of Chang et al. 2020: mean of token embeddings, then an MLP.

Each tower averages the embeddings of its input's real tokens (masked mean) and maps the
average through an MLP (`hidden_widths`, `tanh` or `relu`, dropout while training) and a final
linear layer to `output_dim`; towers are compared by dot product (or cosine with
`normalize`). `BowMlp` is called like `TextEncoder` — `apply({"params": p}, input_ids,
attention_mask, deterministic=..., rngs=...)` -> float32 [n, output_dim] — and exposes the
`encoder` and `pooling` attributes the dual encoder, `encode.LoadedEncoder` and the recipes
read, so it takes a Transformer tower's place everywhere.

Parameters: `token_embeddings/embedding` [vocab, embed_dim], `hidden_<i>/{kernel,bias}`,
`output/{kernel,bias}`, all with logical axis names. The hidden layers alternate
column- and row-parallel (Megatron): even layers split their output width over `mlp`, odd
layers their input width, so each pair needs one all-reduce and no mesh axis appears twice in
one kernel.

`BowMlpSpec` is what `registry.build` returns for `model.type='bow_mlp'`. There is no Hugging
Face architecture for this model: `save` writes `model.safetensors` (flax names and layouts,
kernels [in, out]) and `bow_mlp.json` (the shape and how the towers score) beside the
tokenizer files, and `load` reads them back (`encode.load_encoder` does on such a directory).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from retrieval_jax import files
from retrieval_jax.models import hf
from retrieval_jax.models.pooling import PoolingConfig, l2_normalize, mean_pool

ACTIVATIONS = {"tanh": jnp.tanh, "relu": nn.relu}
CONFIG_FILE = "bow_mlp.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "retrieval_jax.bow_mlp"


@dataclasses.dataclass(frozen=True)
class BowConfig:
  """Shape and behaviour of a BoW-MLP tower.

  Attributes:
    vocab_size: Rows of the token embedding table (the tokenizer's vocabulary).
    embed_dim: Width of a token embedding.
    hidden_widths: Widths of the MLP's hidden layers (at least one).
    activation: `tanh` or `relu`, after each hidden layer.
    output_dim: Width of the embedding (the final linear layer).
    normalize: L2-normalise the embedding (cosine instead of dot product).
    dropout: Dropout rate after each hidden activation while training.
    max_position_embeddings: The longest input the recipes may feed. A bag of words has no
      position table; this is only the cap their length checks read.
    dtype: Computation dtype of the MLP (the mean is taken in float32).
    param_dtype: Parameter storage dtype.
  """
  vocab_size: int
  embed_dim: int = 512
  hidden_widths: tuple[int, ...] = (1024, 1024)
  activation: str = "tanh"
  output_dim: int = 512
  normalize: bool = False
  dropout: float = 0.1
  max_position_embeddings: int = 512
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}")
    if not self.hidden_widths or min(self.hidden_widths) < 1:
      raise ValueError(f"hidden_widths={self.hidden_widths!r} must be one or more positive "
                       "widths")
    for name in ("vocab_size", "embed_dim", "output_dim", "max_position_embeddings"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)!r} must be positive")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")

  @property
  def hidden_size(self) -> int:
    """The embedding's width, what callers of a Transformer's `hidden_size` want from it."""
    return self.output_dim

  @property
  def intermediate_size(self) -> int:
    """The gcd of the widths the `mlp` rule splits over `mesh.model` (even hidden layers'):
    `sharding.validate` checks it divides the model axis, as a Transformer's MLP width."""
    return math.gcd(*self.hidden_widths[0::2])

  @property
  def num_heads(self) -> int:
    """No attention heads: nothing for `mesh.model` to split (`sharding.validate` reads it)."""
    return 0

  @property
  def with_pooler(self) -> bool:
    return False

  def to_json(self) -> dict[str, Any]:
    """The fields `save` records (dtypes are a property of the run, not of the weights)."""
    return {"vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
            "hidden_widths": list(self.hidden_widths), "activation": self.activation,
            "output_dim": self.output_dim, "normalize": self.normalize, "dropout": self.dropout,
            "max_position_embeddings": self.max_position_embeddings}


def _hidden_axes(i: int) -> tuple[str, str]:
  """(input, output) logical names of hidden layer i: column-parallel, then row-parallel."""
  return ("embed", "mlp") if i % 2 == 0 else ("mlp", "embed")


class BowMlp(nn.Module):
  """Token ids -> one embedding per sequence: masked mean of token embeddings, then the MLP.

  Call with `deterministic=False` and a `dropout` RNG to train.
  """
  config: BowConfig

  @property
  def encoder(self) -> BowConfig:
    """The shape, under the name `TextEncoder` gives its own (`LoadedEncoder.config`)."""
    return self.config

  @property
  def pooling(self) -> PoolingConfig:
    """A masked mean with no projection (the MLP is the model, not a head)."""
    return PoolingConfig(mode="mean", normalize=self.config.normalize)

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic: bool = True):
    del token_type_ids  # a bag of words has no segments
    cfg = self.config
    tokens = nn.Embed(cfg.vocab_size, cfg.embed_dim, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype,
                      embedding_init=nn.with_logical_partitioning(
                          nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
                          ("vocab", "embed")),
                      name="token_embeddings")(input_ids)
    x = mean_pool(tokens, attention_mask)
    activation = ACTIVATIONS[cfg.activation]
    for i, width in enumerate(cfg.hidden_widths):
      names = _hidden_axes(i)
      x = nn.Dense(width, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                            names),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                          names[1:]),
                   name=f"hidden_{i}")(x)
      x = nn.Dropout(cfg.dropout)(activation(x), deterministic=deterministic)
    last = _hidden_axes(len(cfg.hidden_widths) - 1)[1]
    x = nn.Dense(cfg.output_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                          (last, "projection")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                        ("projection",)),
                 name="output")(x).astype(jnp.float32)
    return l2_normalize(x) if cfg.normalize else x


def init_params(model: BowMlp, rng: jax.Array, seq_len: int = 8) -> dict:
  """Random parameters (boxed with logical axis names)."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return model.init(rng, ids, jnp.ones_like(ids))["params"]


def abstract_params(model: BowMlp, seq_len: int = 8) -> dict:
  """Shapes, dtypes and logical axis names of `model`'s parameters, without allocating them."""
  return jax.eval_shape(lambda rng: init_params(model, rng, seq_len), jax.random.PRNGKey(0))


@dataclasses.dataclass(frozen=True)
class BowMlpSpec:
  """A `BowMlp` as `registry.build` resolves `model.type='bow_mlp'`: what the recipes read of
  a `registry.TransformerSpec`.

  Its weights always start random (`model_dir` is None); `encoder` is the `BowConfig`.
  """
  encoder: BowConfig
  tokenizer_dir: pathlib.Path
  model_dir: None = None
  mlm_head: bool = False  # what recipes that need a masked-LM head check

  @property
  def module(self) -> BowMlp:
    return BowMlp(self.encoder)

  @property
  def pooling(self) -> PoolingConfig:
    return self.module.pooling

  def abstract_params(self) -> Any:
    """Boxed shapes with logical axis names (for shardings)."""
    return abstract_params(self.module)

  def initial_params(self, rng: jax.Array) -> Any:
    """Host numpy params, randomly initialised from `rng`."""
    return jax.tree_util.tree_map(np.asarray,
                                  nn.meta.unbox(init_params(self.module, rng)))


def is_saved(directory: str | os.PathLike) -> bool:
  """Whether `directory` (local) holds a `save`d BoW-MLP."""
  return (pathlib.Path(directory) / CONFIG_FILE).is_file()


def save(directory: str | os.PathLike, config: BowConfig, params: Mapping[str, Any], *,
         tokenizer_dir: str | os.PathLike | None = None, max_seq_length: int | None = None,
         similarity: str | None = None, prompts: Mapping[str, str] | None = None):
  """Writes `model.safetensors`, `bow_mlp.json` and the tokenizer files to `directory`.

  Args:
    directory: Local or remote (`gs://...`); created.
    config: The tower's shape.
    params: Its (unboxed, host) parameters.
    tokenizer_dir: Copy the tokenizer files from here.
    max_seq_length: The token cap the model was measured with (recorded).
    similarity: `dot` or `cosine`; None: cosine when `config.normalize`, else dot.
    prompts: Query / document prefixes the model was trained with (recorded).

  Returns:
    The directory (`pathlib.Path` when local, `etils.epath.Path` when remote).
  """
  similarity = similarity or ("cosine" if config.normalize else "dot")
  if similarity not in ("dot", "cosine"):
    raise ValueError(f"similarity={similarity!r} must be dot or cosine for a BoW-MLP")
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(dict(params)), sep=".")
  tensors = {name: np.ascontiguousarray(np.asarray(value, np.float32))
             for name, value in flat.items()}
  with files.writing_dir(directory) as out:  # safetensors writes local files
    safetensors.numpy.save_file(tensors, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps({
        "format": FORMAT, "config": config.to_json(), "similarity": similarity,
        "max_seq_length": max_seq_length or config.max_position_embeddings,
        "prompts": dict(prompts or {})}, indent=2))
    if tokenizer_dir is not None:
      for name in hf.TOKENIZER_FILES:
        source = pathlib.Path(tokenizer_dir) / name
        if source.exists():
          shutil.copy2(source, out / name)
  if files.is_remote(directory):
    return files.as_path(directory)
  return pathlib.Path(os.fspath(files.as_path(directory)))


def load(directory: str | os.PathLike, **overrides) -> tuple[BowConfig, dict[str, Any]]:
  """(config, host params) of a `save`d directory; `overrides` replace config fields (dtype,
  normalize, dropout).

  Raises:
    ValueError: The directory is not a BoW-MLP, or its weights do not match its config.
  """
  local = files.local_copy(directory)
  meta = json.loads((local / CONFIG_FILE).read_text())
  if meta.get("format") != FORMAT:
    raise ValueError(f"{local / CONFIG_FILE} is not a {FORMAT} file")
  fields = dict(meta["config"], hidden_widths=tuple(meta["config"]["hidden_widths"]))
  config = BowConfig(**{**fields, **overrides})
  tensors = safetensors.numpy.load_file(str(local / WEIGHTS_FILE))
  params = flax.traverse_util.unflatten_dict(
      {tuple(name.split(".")): value.astype(config.param_dtype)
       for name, value in tensors.items()})
  expected = abstract_params(BowMlp(config))
  shapes = jax.tree_util.tree_map(lambda x: x.shape, nn.meta.unbox(expected))
  if jax.tree_util.tree_map(np.shape, params) != shapes:
    raise ValueError(f"{local / WEIGHTS_FILE} does not match {local / CONFIG_FILE}: "
                     f"{jax.tree_util.tree_map(np.shape, params)} vs {shapes}")
  return config, params
