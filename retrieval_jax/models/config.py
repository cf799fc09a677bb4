"""Encoder hyperparameters, and their mapping to and from Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# HF `hidden_act` names we implement, and whether GELU uses the tanh approximation.
_ACTIVATIONS = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True}
_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Shape and behaviour of a BERT- or RoBERTa-family Transformer encoder.

  Attributes:
    vocab_size: Size of the token vocabulary.
    hidden_size: Width of the residual stream (`embed`).
    num_layers: Number of Transformer blocks.
    num_heads: Attention heads per block; must divide `hidden_size`.
    intermediate_size: Width of the feed-forward layer (`mlp`).
    max_position_embeddings: Rows of the absolute position table.
    type_vocab_size: Rows of the token-type table (2 for BERT, 1 for RoBERTa).
    layer_norm_eps: LayerNorm epsilon.
    hidden_act: HF activation name: `gelu` (exact erf GELU) or `gelu_new` (tanh).
    pad_token_id: Padding id; RoBERTa positions count from it.
    model_type: `bert`, `roberta` or `xlm-roberta` (RoBERTa position offset).
    hidden_dropout: Dropout on embeddings and block outputs.
    attention_dropout: Dropout on attention probabilities.
    with_pooler: Whether the checkpoint has BERT's [CLS] dense+tanh pooler.
    dtype: Computation dtype (bfloat16 on accelerators, float32 on CPU).
    param_dtype: Parameter storage dtype.
    remat: Rematerialise each block in the backward pass (saves activation memory).
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pad_token_id: int = 0
  model_type: str = "bert"
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  with_pooler: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(
          f"hidden_act={self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}")
    if self.model_type not in _MODEL_TYPES:
      raise ValueError(f"model_type={self.model_type!r} is not one of {_MODEL_TYPES}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def gelu_approximate(self) -> bool:
    return _ACTIVATIONS[self.hidden_act]

  @property
  def position_offset(self) -> int | None:
    """RoBERTa numbers real tokens from pad_token_id + 1; BERT from 0 (None)."""
    return self.pad_token_id if self.model_type in ("roberta", "xlm-roberta") else None

  def replace(self, **changes) -> "EncoderConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> "EncoderConfig":
    """Builds a config from a parsed HF `config.json`.

    Args:
      hf: The parsed `config.json` of a BERT/RoBERTa checkpoint.
      **overrides: Fields to set on top (dtype, dropout, remat, ...).

    Raises:
      ValueError: For a model type or option this encoder does not implement.
    """
    model_type = hf.get("model_type", "bert")
    if model_type not in _MODEL_TYPES:
      raise ValueError(f"model_type={model_type!r} in config.json is not supported; "
                       f"supported: {_MODEL_TYPES}")
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise ValueError(f"position_embedding_type={position_type!r} is not supported; "
                       "only 'absolute' positions are implemented")
    fields = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_act=hf.get("hidden_act", "gelu"),
        pad_token_id=hf.get("pad_token_id", 0) if hf.get("pad_token_id") is not None else 0,
        model_type=model_type,
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
    )
    fields.update(overrides)
    return cls(**fields)

  def to_hf(self) -> dict[str, Any]:
    """The HF `config.json` dictionary that describes these weights."""
    architecture = {"bert": "BertModel", "roberta": "RobertaModel",
                    "xlm-roberta": "XLMRobertaModel"}[self.model_type]
    return {
        "architectures": [architecture],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "intermediate_size": self.intermediate_size,
        "max_position_embeddings": self.max_position_embeddings,
        "type_vocab_size": self.type_vocab_size,
        "layer_norm_eps": self.layer_norm_eps,
        "hidden_act": self.hidden_act,
        "pad_token_id": self.pad_token_id,
        "hidden_dropout_prob": self.hidden_dropout,
        "attention_probs_dropout_prob": self.attention_dropout,
        "position_embedding_type": "absolute",
        "initializer_range": 0.02,
        "add_pooling_layer": self.with_pooler,
        "torch_dtype": "float32",
    }
