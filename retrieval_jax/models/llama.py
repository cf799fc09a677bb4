"""A Llama-family causal language model in Flax linen, numerically equal to Hugging Face's.

RMSNorm (in float32, as `LlamaRMSNorm`), rotary position embeddings (the half-split
rotation of HF's checkpoints), grouped-query attention, a SwiGLU MLP and optionally tied
input/output embeddings: `LlamaForCausalLM`'s forward pass. The layers are one `nn.scan`
over a stacked parameter tree (one compiled layer, however deep the model), and attention
reads and writes an explicit key/value cache, so prefill and one-token decoding are the same
call: `Llama(ids, positions, key_mask, cache, index)` writes the new keys and values at
`index` and attends over the cache slots `key_mask` marks valid and not in the future.

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, `layers`).
Key/value projections use `kv_heads`, which `sharding.LOGICAL_AXIS_RULES` leaves
replicated: grouped-query models have few key/value heads (3 in SmolLM2-135M), rarely a
multiple of the model axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

_INIT_STD = 0.02  # Llama's initializer_range.


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """The shape of a Llama-family model (HF `LlamaConfig` names in the comments)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int          # num_hidden_layers
  num_heads: int           # num_attention_heads
  num_kv_heads: int        # num_key_value_heads
  head_dim: int
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")


class KVCache(NamedTuple):
  """Keys and values of every layer: [layers, batch, slots, kv_heads, head_dim] each."""
  keys: jax.Array
  values: jax.Array


def init_cache(config: LlamaConfig, batch: int, slots: int, dtype=None) -> KVCache:
  """An empty cache of `slots` positions for `batch` sequences."""
  shape = (config.num_layers, batch, slots, config.num_kv_heads, config.head_dim)
  dtype = dtype or config.dtype
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def _init(names, initializer=None):
  return nn.with_logical_partitioning(initializer or nn.initializers.normal(_INIT_STD), names)


class RMSNorm(nn.Module):
  """x / rms(x) * weight, computed in float32 and cast back, as `LlamaRMSNorm`."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    weight = self.param("weight", _init(("embed",), nn.initializers.ones_init()),
                        (cfg.hidden_size,), cfg.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.rms_norm_eps)
    return weight.astype(cfg.dtype) * normed.astype(cfg.dtype)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotates x [b, l, heads, d] by its positions [b, l] (HF's `rotate_half` layout)."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1]))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, half]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention that writes this call's keys and values into the cache.

  With a `prefix` (keys and values [p, t, kv_heads, head_dim] of p prompts, read only), the
  b = p * s rows are s continuations of each prompt (row i * s + j continues prompt i): every
  row attends to its prompt's prefix, then to its own cache. The prompt is stored once, not
  s times, which is what makes sampling N answers to a long prompt cheap.

  With `attend_slots`, only the cache's first `attend_slots` slots are read: a long prompt
  prefilled in chunks then skips the slots after each chunk, which the causal mask would
  hide anyway (about half of the attention's work on a whole prompt).
  """
  config: LlamaConfig
  attend_slots: int | None = None

  @nn.compact
  def __call__(self, x, positions, key_mask, keys, values, index, prefix=None,
               prefix_mask=None):
    cfg = self.config

    def project(name, heads, names):
      return nn.DenseGeneral((heads, cfg.head_dim), use_bias=False, dtype=cfg.dtype,
                             param_dtype=cfg.param_dtype, kernel_init=_init(names),
                             name=name)(x)

    q = rotary(project("q_proj", cfg.num_heads, ("embed", "heads", "kv")), positions,
               cfg.rope_theta)
    k = rotary(project("k_proj", cfg.num_kv_heads, ("embed", "kv_heads", "kv")), positions,
               cfg.rope_theta)
    v = project("v_proj", cfg.num_kv_heads, ("embed", "kv_heads", "kv"))
    keys = jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), (0, index, 0, 0))
    values = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), (0, index, 0, 0))

    batch, length = x.shape[:2]
    group = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(batch, length, cfg.num_kv_heads, group, cfg.head_dim)
    scale = cfg.head_dim ** -0.5
    lowest = jnp.finfo(jnp.float32).min
    seen_keys, seen_values = keys, values
    if self.attend_slots is not None:
      seen_keys, seen_values = keys[:, :self.attend_slots], values[:, :self.attend_slots]
      key_mask = key_mask[:, :self.attend_slots]
    scores = jnp.einsum("blkgd,btkd->bkglt", q, seen_keys.astype(cfg.dtype),
                        preferred_element_type=jnp.float32) * scale
    # A slot is visible when it holds a real token and is not after the query's own slot.
    slots = jnp.arange(seen_keys.shape[1])
    causal = slots[None, :] <= (index + jnp.arange(length))[:, None]  # [l, t]
    visible = causal[None] & key_mask[:, None, :].astype(bool)        # [b, l, t]
    scores = jnp.where(visible[:, None, None], scores, lowest)
    if prefix is None:
      weights = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
      out = jnp.einsum("bkglt,btkd->blkgd", weights, seen_values.astype(cfg.dtype))
    else:
      prefix_keys, prefix_values = prefix
      prompts = prefix_keys.shape[0]
      per_prompt = q.reshape(prompts, batch // prompts, *q.shape[1:])
      prefix_scores = jnp.einsum("pslkgd,ptkd->pskglt", per_prompt,
                                 prefix_keys.astype(cfg.dtype),
                                 preferred_element_type=jnp.float32) * scale
      prefix_scores = jnp.where(prefix_mask[:, None, None, None, None, :].astype(bool),
                                prefix_scores, lowest).reshape(*scores.shape[:-1], -1)
      prefix_length = prefix_scores.shape[-1]
      weights = jax.nn.softmax(jnp.concatenate([prefix_scores, scores], axis=-1),
                               axis=-1).astype(cfg.dtype)
      prefix_weights = weights[..., :prefix_length].reshape(
          prompts, batch // prompts, *weights.shape[1:-1], prefix_length)
      out = jnp.einsum("pskglt,ptkd->pslkgd", prefix_weights,
                       prefix_values.astype(cfg.dtype)).reshape(q.shape)
      out = out + jnp.einsum("bkglt,btkd->blkgd", weights[..., prefix_length:],
                             seen_values.astype(cfg.dtype))
    out = out.reshape(batch, length, cfg.num_heads, cfg.head_dim)
    out = nn.DenseGeneral(cfg.hidden_size, axis=(-2, -1), use_bias=False, dtype=cfg.dtype,
                          param_dtype=cfg.param_dtype,
                          kernel_init=_init(("heads", "kv", "embed")), name="o_proj")(out)
    return out, keys, values


class MLP(nn.Module):
  """down(silu(gate(x)) * up(x))."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config

    def dense(width, names, name):
      return nn.Dense(width, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      kernel_init=_init(names), name=name)

    hidden = nn.silu(dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x))
    hidden = hidden * dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x)
    return dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm attention and MLP with residuals; the scan body (carry x, one layer's cache)."""
  config: LlamaConfig
  attend_slots: int | None = None

  @nn.compact
  def __call__(self, x, layer_cache, layer_prefix, positions, key_mask, prefix_mask, index):
    keys, values = layer_cache
    attended, keys, values = Attention(self.config, self.attend_slots, name="self_attn")(
        RMSNorm(self.config, name="input_layernorm")(x), positions, key_mask, keys, values,
        index, layer_prefix, prefix_mask)
    x = x + attended
    x = x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="post_attention_layernorm")(x))
    return x, (keys, values)


class Llama(nn.Module):
  """`LlamaForCausalLM`: token ids -> next-token logits, reading and writing a KV cache.

  Call with `input_ids` [b, l], their `positions` [b, l] (left padding: count real tokens
  only), `key_mask` [b, slots] (1 where a cache slot holds a real token once this call's
  tokens are written), the `cache` and the slot `index` of `input_ids[:, 0]`. Returns the
  logits ([b, l, vocab], or [b, vocab] of the last position with `last_only`) and the new cache.

  With a `prefix` cache of p prompts (read only; `prefix_mask` [p, t] marks its real tokens),
  the b rows are b / p continuations of each, and every row attends to its prompt's prefix
  before its own cache (see `Attention`); `positions` then count on from the prefix.
  `attend_slots` (static) limits attention to the cache's first slots (chunked prefill).
  """
  config: LlamaConfig

  @nn.compact
  def __call__(self, input_ids, positions, key_mask, cache: KVCache, index,
               last_only: bool = False, prefix: KVCache | None = None,
               prefix_mask: jax.Array | None = None, attend_slots: int | None = None):
    cfg = self.config
    embed = _embedding(cfg, name="embed_tokens")
    x = embed(input_ids)
    layers = nn.scan(DecoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast,
                              nn.broadcast),
                     length=cfg.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})(
                         cfg, attend_slots, name="layers")
    layer_prefix = None if prefix is None else (prefix.keys, prefix.values)
    x, (keys, values) = layers(x, (cache.keys, cache.values), layer_prefix, positions,
                               key_mask, prefix_mask, index)
    x = RMSNorm(cfg, name="norm")(x)
    if last_only:
      x = x[:, -1]
    if cfg.tie_word_embeddings:
      logits = embed.attend(x)
    else:
      logits = _lm_head(cfg, name="lm_head")(x)
    return logits.astype(jnp.float32), KVCache(keys, values)


def _embedding(cfg: LlamaConfig, name: str | None = None) -> nn.Embed:
  return nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  embedding_init=_init(("vocab", "embed")), name=name)


def _lm_head(cfg: LlamaConfig, name: str | None = None) -> nn.Dense:
  return nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  kernel_init=_init(("embed", "vocab")), name=name)


LayerCache = tuple[jax.Array, jax.Array]  # one layer's (keys, values): [b, slots, kv_heads, d]


def unstack_layers(params: Any) -> list[Any]:
  """`Llama` params' scanned layers as one param tree per layer."""
  layers = params["layers"]
  count = jax.tree_util.tree_leaves(layers)[0].shape[0]
  return [jax.tree_util.tree_map(lambda p, i=i: p[i], layers) for i in range(count)]


def unstack_cache(cache: KVCache) -> list[LayerCache]:
  """A stacked cache as one (keys, values) pair per layer."""
  return [(cache.keys[i], cache.values[i]) for i in range(cache.keys.shape[0])]


def unrolled_step(model: Llama, params: Any, layer_params: list[Any], input_ids: jax.Array,
                  positions: jax.Array, key_mask: jax.Array, caches: list[LayerCache],
                  index: jax.Array, prefixes: list[LayerCache] | None = None,
                  prefix_mask: jax.Array | None = None) -> tuple[jax.Array, list[LayerCache]]:
  """`model.apply(..., last_only=True)` with the layers unrolled, each with its own cache.

  The same layers and arithmetic as `Llama`. In a decoding loop the scanned form slices
  each layer's cache out of the stacked one and stacks the updated slices back: a copy of
  the whole cache per generated token, which dominated decoding time. Here every layer's
  cache is an array of its own that the loop updates in place.

  Args:
    model: The `Llama` module (its config).
    params: Its params.
    layer_params: `unstack_layers(params)` (split once, outside the loop).
    input_ids, positions, key_mask, index, prefix_mask: As `Llama`'s.
    caches: One (keys, values) per layer (`unstack_cache`).
    prefixes: One read-only prefix (keys, values) per layer, or None.

  Returns:
    (logits [b, vocab] of the last position, the updated caches).
  """
  cfg = model.config
  embed = _embedding(cfg)
  x = embed.apply({"params": params["embed_tokens"]}, input_ids)
  updated = []
  for i, (layer, cache) in enumerate(zip(layer_params, caches)):
    prefix = None if prefixes is None else prefixes[i]
    x, cache = DecoderLayer(cfg).apply({"params": layer}, x, cache, prefix, positions,
                                       key_mask, prefix_mask, index)
    updated.append(cache)
  x = RMSNorm(cfg).apply({"params": params["norm"]}, x)[:, -1]
  if cfg.tie_word_embeddings:
    logits = embed.apply({"params": params["embed_tokens"]}, x, method="attend")
  else:
    logits = _lm_head(cfg).apply({"params": params["lm_head"]}, x)
  return logits.astype(jnp.float32), updated


def forward(model: Llama, params, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Logits [b, l, vocab] of a whole (left- or right-padded) batch with no cache kept."""
  positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
  cache = init_cache(model.config, input_ids.shape[0], input_ids.shape[1])
  logits, _ = model.apply({"params": params}, input_ids, positions, attention_mask, cache, 0)
  return logits
