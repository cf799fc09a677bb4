"""A BERT/RoBERTa Transformer encoder in Flax linen, numerically equal to Hugging Face's.

Post-LN blocks, absolute positions (with RoBERTa's padding offset), token types and exact
GELU, as in `transformers.BertModel` / `RobertaModel`. Every parameter carries logical axis
names (`vocab`, `embed`, `heads`, `kv`, `mlp`, ...) so that `retrieval_jax.sharding` can map
them onto a device mesh. The parameter tree mirrors the HF module tree, which keeps
`models/hf.py` a renaming, not a re-derivation.

`Attention` takes separate query and key/value inputs and a mask broadcastable to
`[batch, queries, keys]`: self-attention is `Attention(x, x, mask)`; RetroMAE's two-stream
decoder and causal masks use the same module. The encoder returns an `EncoderOutput`.
Dropout draws 16 random bits per element (`models/dropout.py`), half of `nn.Dropout`'s.
"""

from __future__ import annotations

from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from retrieval_jax.models import dense
from retrieval_jax.models import dropout
from retrieval_jax.models import layer_norm
from retrieval_jax.models.config import EncoderConfig

_INIT_STD = 0.02  # BERT's initializer_range.


def _init(names: tuple[str | None, ...], initializer=None):
  """An initializer that also records the logical axis names of the parameter."""
  return nn.with_logical_partitioning(initializer or nn.initializers.normal(_INIT_STD), names)


def _zeros(names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _layer_norm(config: EncoderConfig, name: str) -> layer_norm.LayerNorm:
  # `nn.LayerNorm`'s parameters with a closed-form backward (fewer passes on CPU).
  return layer_norm.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.dtype,
                              param_dtype=config.param_dtype, scale_init=_ones(("embed",)),
                              bias_init=_zeros(("embed",)), name=name)


def position_ids(input_ids: jax.Array, config: EncoderConfig) -> jax.Array:
  """Absolute positions: 0.. for BERT; pad+1.. over real tokens (pad elsewhere) for RoBERTa."""
  if config.position_offset is None:
    return jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
  # Same rule as HF's create_position_ids_from_input_ids: padding keeps position `pad`.
  is_token = (input_ids != config.pad_token_id).astype(jnp.int32)
  return jnp.cumsum(is_token, axis=-1) * is_token + config.position_offset


class Embeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic: bool):
    cfg = self.config

    def table(rows, names, name):
      return nn.Embed(rows, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      embedding_init=_init(names), name=name)

    x = table(cfg.vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
    x = x + table(cfg.max_position_embeddings, ("position", "embed"),
                  "position_embeddings")(position_ids(input_ids, cfg))
    x = x + table(cfg.type_vocab_size, ("token_type", "embed"),
                  "token_type_embeddings")(token_type_ids)
    x = _layer_norm(cfg, "LayerNorm")(x)
    return dropout.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class HeadProjection(nn.Module):
  """x [b, l, embed] -> [b, heads, l, kv]: q, k or v, laid out head-major.

  Same parameters as `nn.DenseGeneral((heads, kv))`. The product is `dense.matmul` over the
  kernel's (heads, kv) flattened, whose backward XLA:CPU runs faster than the einsum's.
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param("kernel", _init(("embed", "heads", "kv")),
                        (cfg.hidden_size, cfg.num_heads, cfg.head_dim), cfg.param_dtype)
    bias = self.param("bias", _zeros(("heads", "kv")), (cfg.num_heads, cfg.head_dim),
                      cfg.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=cfg.dtype)
    y = dense.matmul(x, kernel.reshape(cfg.hidden_size, -1))
    return (y.reshape(*y.shape[:-1], cfg.num_heads, cfg.head_dim) + bias).transpose(0, 2, 1, 3)


class HeadMerge(nn.Module):
  """context [b, heads, l, kv] -> [b, l, embed]: the attention's output projection.

  Same parameters as `nn.DenseGeneral(embed, axis=(-2, -1))` on the [b, l, heads, kv]
  context, through `dense.matmul`.
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, context):
    cfg = self.config
    kernel = self.param("kernel", _init(("heads", "kv", "embed")),
                        (cfg.num_heads, cfg.head_dim, cfg.hidden_size), cfg.param_dtype)
    bias = self.param("bias", _zeros(("embed",)), (cfg.hidden_size,), cfg.param_dtype)
    context, kernel, bias = nn.dtypes.promote_dtype(context, kernel, bias, dtype=cfg.dtype)
    b, _, length, _ = context.shape
    merged = context.transpose(0, 2, 1, 3).reshape(b, length, -1)
    return dense.matmul(merged, kernel.reshape(-1, cfg.hidden_size)) + bias


@flax.struct.dataclass
class EncoderOutput:
  """What the encoder returns.

  Attributes:
    last_hidden_state: [batch, length, hidden] states of the last layer.
    pooler_output: BERT's dense+tanh over [CLS], [batch, hidden]; None without a pooler.
    hidden_states: With `output_hidden_states`: the embedding output and every layer's
      output, `num_layers + 1` arrays of [batch, length, hidden] (HF's `hidden_states`);
      None otherwise.
  """
  last_hidden_state: jax.Array
  pooler_output: Optional[jax.Array] = None
  hidden_states: Optional[tuple[jax.Array, ...]] = None


def mask_bias(mask: jax.Array) -> jax.Array:
  """Additive float32 attention bias [b, 1, q, k] from a 0/1 mask broadcastable to [b, q, k].

  A padding mask [b, k] is taken as [b, 1, k] (every query sees the same keys). The most
  negative finite value keeps fully masked rows finite.
  """
  if mask.ndim == 2:
    mask = mask[:, None, :]
  return jnp.where(mask[:, None] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


class Attention(nn.Module):
  """Multi-head attention with HF's output projection, residual and post-LN.

  Queries come from `x`, keys and values from `kv` (self-attention: `kv is x`); the residual
  is added to `x`. `bias` is `mask_bias(...)`: [b, 1, q or 1, k].
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, kv, bias, deterministic: bool):
    cfg = self.config
    query = HeadProjection(cfg, name="query")(x)
    key = HeadProjection(cfg, name="key")(kv)
    value = HeadProjection(cfg, name="value")(kv)
    # Scale q ([b, h, l, d]) rather than the logits ([b, h, l, l]): l/d times fewer multiplies.
    query = query * jnp.asarray(cfg.head_dim ** -0.5, query.dtype)
    # Logits and softmax in float32: a bf16 softmax loses the order of close scores.
    logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
    logits = logits + bias
    # Softmax with the normalisation deferred until after the value product: dividing the
    # [b, h, l, d] context instead of the [b, h, l, l] probabilities is cheaper and the same
    # maths (dropout is elementwise, so it commutes with the division).
    weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    denominator = jnp.sum(weights, axis=-1, keepdims=True)
    weights = dropout.Dropout(cfg.attention_dropout)(weights, deterministic=deterministic)
    context = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(cfg.dtype), value,
                         preferred_element_type=jnp.float32) / denominator
    out = HeadMerge(cfg, name="output")(context.astype(cfg.dtype))
    out = dropout.Dropout(cfg.hidden_dropout)(out, deterministic=deterministic)
    return _layer_norm(cfg, "output_LayerNorm")(out + x)


class FeedForward(nn.Module):
  """GELU MLP with residual and post-LN."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.config
    h = dense.Dense(cfg.intermediate_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    kernel_init=_init(("embed", "mlp")), bias_init=_zeros(("mlp",)),
                    name="intermediate")(x)
    h = gelu(h, cfg.gelu_approximate)
    h = dense.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    kernel_init=_init(("mlp", "embed")), bias_init=_zeros(("embed",)),
                    name="output")(h)
    h = dropout.Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
    return _layer_norm(cfg, "output_LayerNorm")(h + x)


def gelu(x: jax.Array, approximate: bool) -> jax.Array:
  """GELU; the exact one as x/2 * (1 + erf(x / sqrt 2)), PyTorch's and HF's formula.

  Written with `erf`: `nn.gelu(approximate=False)` goes through `erfc`, which XLA:CPU
  evaluates more slowly for the same values (to float rounding).
  """
  if approximate:
    return nn.gelu(x, approximate=True)
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(2 ** -0.5, x.dtype)))


class TransformerBlock(nn.Module):
  """One post-LN layer: attention (of `x` over `kv`, default `x` itself), then feed-forward."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool, kv=None):
    x = Attention(self.config, name="attention")(x, x if kv is None else kv, bias,
                                                 deterministic)
    return FeedForward(self.config, name="mlp")(x, deterministic)


class TransformerEncoder(nn.Module):
  """The encoder: token ids -> `EncoderOutput` (last states, pooler output, all layers).

  The pooler output (BERT's dense+tanh over [CLS]) is None when `config.with_pooler` is off.
  `attention_mask` is a [b, l] padding mask or a full [b, l, l] mask.
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic: bool = True,
               output_hidden_states: bool = False) -> EncoderOutput:
    cfg = self.config
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = Embeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic)
    bias = mask_bias(attention_mask)
    block = nn.remat(TransformerBlock, static_argnums=(3,)) if cfg.remat else TransformerBlock
    states = [x]
    for i in range(cfg.num_layers):
      x = block(cfg, name=f"layer_{i}")(x, bias, deterministic)
      states.append(x)
    pooled = None
    if cfg.with_pooler:
      pooled = nn.tanh(nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                kernel_init=_init(("embed", "embed_out")),
                                bias_init=_zeros(("embed_out",)), name="pooler")(x[:, 0]))
    return EncoderOutput(x, pooled, tuple(states) if output_hidden_states else None)
