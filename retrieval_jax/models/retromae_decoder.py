"""RetroMAE's enhanced decoder (Xiao et al. 2022; staoxiao/RetroMAE `src/pretrain/modeling.py`).

One post-LN BERT layer (`TransformerBlock`) over two streams of the same length L:
  * query stream H1 = the position embeddings (the encoder's table rows 0..L-1, as they are:
    no LayerNorm) + the sentence vector (the encoder's last [CLS] state);
  * content stream H2 = [sentence vector; the embedding-layer output of the original tokens
    1..L-1] (the encoder's own embedding module, so its LayerNorm and dropout apply);
and a per-row visibility [b, L, L] (`data/masking.decoder_visibility`). The attention
residual is the query stream, as the reference's `BertLayerForDecoder`. The MLM head that
reads its output is the encoder's (`TextEncoder.mlm_logits`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.transformer import TransformerBlock, mask_bias


def decoder_streams(sentence: jax.Array, token_embeddings: jax.Array,
                    position_table: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(H1, H2), each [b, L, d] (module docstring)."""
  length = token_embeddings.shape[1]
  sentence = sentence[:, None, :].astype(token_embeddings.dtype)
  query = position_table[None, :length].astype(token_embeddings.dtype) + sentence
  content = jnp.concatenate([sentence, token_embeddings[:, 1:]], axis=1)
  return query, content


class RetroMAEDecoder(nn.Module):
  """The one-layer decoder; `config` is the encoder's (same width, heads, dropout)."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, sentence, token_embeddings, position_table, visibility,
               deterministic: bool = True):
    """Decoder states [b, L, d].

    Args:
      sentence: [b, d] the sentence vector.
      token_embeddings: [b, L, d] the embedding-layer output of the uncorrupted block.
      position_table: [>= L, d] the encoder's position embeddings.
      visibility: [b, L, L] 1 where row i may attend to position j.
      deterministic: False to apply dropout (needs a `dropout` RNG).
    """
    query, content = decoder_streams(sentence, token_embeddings, position_table)
    return TransformerBlock(self.config, name="layer")(query, mask_bias(visibility),
                                                       deterministic, kv=content)
