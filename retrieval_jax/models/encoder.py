"""`TextEncoder`: the Transformer plus its heads, the model every recipe embeds with.

Parameters live under `backbone` (the HF-compatible Transformer), `head` (the pooling head's
projection, if any) and, when configured, `token_head` (ColBERT), `mlm_head` (masked LM,
tied to the word embeddings) and `mlp_head` (a projection MLP over the sentence vector).
Calling the module gives the sentence vector; `outputs` gives everything at once.
"""

from __future__ import annotations

from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.heads import (MLMHead, MLPProjection, MLPProjectionConfig,
                                        TokenProjection, TokenProjectionConfig)
from retrieval_jax.models.pooling import PoolingConfig, PoolingHead
from retrieval_jax.models.transformer import TransformerEncoder


@flax.struct.dataclass
class TextEncoderOutput:
  """What `TextEncoder.outputs` returns.

  Attributes:
    embedding: [b, d] the pooling head's sentence vector.
    last_hidden_state: [b, l, hidden].
    pooler_output: BERT's pooler over [CLS], or None.
    hidden_states: The embedding output and every layer's (HF `output_hidden_states`), or None.
    token_vectors: [b, l, dim] ColBERT token vectors (with a token head), or None.
    projection: [b, widths[-1]] the MLP head over `embedding` (with an MLP head), or None.
  """
  embedding: jax.Array
  last_hidden_state: jax.Array
  pooler_output: Optional[jax.Array] = None
  hidden_states: Optional[tuple[jax.Array, ...]] = None
  token_vectors: Optional[jax.Array] = None
  projection: Optional[jax.Array] = None


class TextEncoder(nn.Module):
  """Maps token ids to one embedding per sequence (and, on request, more).

  Call with `deterministic=False` and a `dropout` RNG to train.
  """
  encoder: EncoderConfig
  pooling: PoolingConfig = PoolingConfig()
  token_projection: TokenProjectionConfig | None = None
  mlm_head: bool = False
  mlp_projection: MLPProjectionConfig | None = None

  def setup(self):
    cfg = self.encoder
    self.backbone = TransformerEncoder(cfg)
    self.head = PoolingHead(self.pooling, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    if self.token_projection is not None:
      self.token_head = TokenProjection(self.token_projection, dtype=cfg.dtype,
                                        param_dtype=cfg.param_dtype)
    if self.mlm_head:
      self.mlm = MLMHead(cfg.vocab_size, cfg.hidden_size, cfg.layer_norm_eps,
                         # RoBERTa's lm_head always uses exact GELU; BERT's its hidden_act.
                         cfg.gelu_approximate and cfg.model_type == "bert",
                         dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="mlm_head")
    if self.mlp_projection is not None:
      self.mlp = MLPProjection(self.mlp_projection, dtype=cfg.dtype,
                               param_dtype=cfg.param_dtype, name="mlp_head")

  def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic: bool = True):
    out = self.backbone(input_ids, attention_mask, token_type_ids, deterministic)
    return self.head(out.last_hidden_state, attention_mask, out.pooler_output)

  def outputs(self, input_ids, attention_mask, token_type_ids=None, deterministic: bool = True,
              output_hidden_states: bool = False) -> TextEncoderOutput:
    """Every output the configured heads give, from one forward."""
    out = self.backbone(input_ids, attention_mask, token_type_ids, deterministic,
                        output_hidden_states=output_hidden_states)
    embedding = self.head(out.last_hidden_state, attention_mask, out.pooler_output)
    tokens = (self.token_head(out.last_hidden_state, attention_mask)
              if self.token_projection is not None else None)
    projection = self.mlp(embedding) if self.mlp_projection is not None else None
    return TextEncoderOutput(embedding, out.last_hidden_state, out.pooler_output,
                             out.hidden_states, tokens, projection)

  def token_vectors(self, input_ids, attention_mask, keep_mask, token_type_ids=None,
                    deterministic: bool = True):
    """ColBERT's token vectors [b, l, dim]: the token head over the last hidden states,
    zero where `keep_mask` is 0.

    `keep_mask` is separate from `attention_mask`: a ColBERT query's [MASK] padding is not
    attended to, yet its vectors take part in MaxSim (its keep mask is 1).
    """
    if self.token_projection is None:
      raise ValueError("this TextEncoder has no token head (model.token_dim is None)")
    hidden = self.backbone(input_ids, attention_mask, token_type_ids,
                           deterministic).last_hidden_state
    return self.token_head(hidden, keep_mask)

  def token_states(self, input_ids, attention_mask, token_type_ids=None,
                   deterministic: bool = True):
    """The last hidden states [b, l, d], for token-level models (ColBERT, RetroMAE)."""
    return self.backbone(input_ids, attention_mask, token_type_ids,
                         deterministic).last_hidden_state

  def mlm_logits(self, hidden):
    """Masked-LM logits [..., vocab] of hidden states, through the tied word embeddings."""
    if not self.mlm_head:
      raise ValueError("this TextEncoder has no MLM head (mlm_head=False)")
    table = self.backbone.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
    return self.mlm(hidden, nn.meta.unbox(table))

  def init_all(self, input_ids, attention_mask):
    """Runs every configured head once (what `init_params` initialises)."""
    out = self.outputs(input_ids, attention_mask)
    if self.mlm_head:
      self.mlm_logits(out.last_hidden_state)
    return out.embedding


def init_params(model: TextEncoder, rng: jax.Array, seq_len: int = 8) -> dict:
  """Random parameters (boxed with logical axis names) for `model` and all its heads."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return model.init(rng, ids, jnp.ones_like(ids), method=TextEncoder.init_all)["params"]


def abstract_params(model: TextEncoder, seq_len: int = 8) -> dict:
  """Shapes, dtypes and logical axis names of `model`'s parameters, without allocating them."""
  return jax.eval_shape(lambda rng: init_params(model, rng, seq_len), jax.random.PRNGKey(0))
