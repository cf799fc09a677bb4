"""`TextEncoder`: Transformer + pooling head, the single-vector model every recipe embeds with."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.pooling import PoolingConfig, PoolingHead
from retrieval_jax.models.transformer import TransformerEncoder


class TextEncoder(nn.Module):
  """Maps token ids to one embedding per sequence.

  Parameters live under `backbone` (the HF-compatible Transformer) and `head` (projection,
  if any). Call with `deterministic=False` and a `dropout` RNG to train.
  """
  encoder: EncoderConfig
  pooling: PoolingConfig = PoolingConfig()

  def setup(self):
    self.backbone = TransformerEncoder(self.encoder)
    self.head = PoolingHead(self.pooling, dtype=self.encoder.dtype,
                            param_dtype=self.encoder.param_dtype)

  def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic: bool = True):
    hidden, pooled = self.backbone(input_ids, attention_mask, token_type_ids, deterministic)
    return self.head(hidden, attention_mask, pooled)

  def token_states(self, input_ids, attention_mask, token_type_ids=None,
                   deterministic: bool = True):
    """The last hidden states [b, l, d], for token-level models (ColBERT, RetroMAE)."""
    return self.backbone(input_ids, attention_mask, token_type_ids, deterministic)[0]


def init_params(model: TextEncoder, rng: jax.Array, seq_len: int = 8) -> dict:
  """Random parameters (boxed with logical axis names) for `model`."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return model.init(rng, ids, jnp.ones_like(ids))["params"]


def abstract_params(model: TextEncoder, seq_len: int = 8) -> dict:
  """Shapes, dtypes and logical axis names of `model`'s parameters, without allocating them."""
  return jax.eval_shape(lambda rng: init_params(model, rng, seq_len), jax.random.PRNGKey(0))
