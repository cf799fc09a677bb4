"""Batched autoregressive decoding of `models/llama.Llama` under `jax.jit`.

Prompts are left-padded to one length, prefilled in chunks, then decoded one token per
`lax.while_loop` iteration (one compiled loop) against the key/value cache, until every row
has produced a stop token or `max_new_tokens`. Sampling is greedy at temperature 0, else temperature and nucleus
(top-p) sampling; each row draws from its own key (`row_keys`), so a prompt's completions do
not depend on which other prompts share its batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from retrieval_jax.models import llama


def sample_token(logits: jax.Array, key: jax.Array, temperature: float,
                 top_p: float) -> jax.Array:
  """One token id per row of `logits` [b, vocab]; `key` is [b] keys (one per row).

  Temperature 0 is greedy (argmax, ties to the lowest id, as `torch.argmax`). Otherwise the
  logits are divided by the temperature and, with top_p < 1, restricted to the smallest set
  of most likely tokens whose probability reaches top_p (the token that crosses it kept),
  as transformers' `TopPLogitsWarper`.
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits.astype(jnp.float32) / temperature
  if top_p < 1.0:
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    kept = before < top_p
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    scaled = jnp.where(scaled >= threshold, scaled, -jnp.inf)
  return jax.vmap(jax.random.categorical)(key, scaled).astype(jnp.int32)


def row_keys(seed: int, prompt_hashes: np.ndarray, sample_index: np.ndarray) -> jax.Array:
  """Per-row keys from the seed, a stable hash of the row's prompt and its sample number."""
  base = jax.random.key(seed)
  return jax.vmap(lambda h, i: jax.random.fold_in(jax.random.fold_in(base, h), i))(
      jnp.asarray(prompt_hashes, jnp.uint32), jnp.asarray(sample_index, jnp.uint32))


@functools.partial(jax.jit, static_argnames=("model", "start", "end"), donate_argnames="cache")
def _prefill_chunk(model: llama.Llama, params, prompt_ids, positions, prompt_mask, cache,
                   *, start: int, end: int):
  return model.apply({"params": params}, prompt_ids[:, start:end], positions[:, start:end],
                     prompt_mask, cache, start, last_only=True, attend_slots=end)


def prefill(model: llama.Llama, params, prompt_ids: jax.Array, positions: jax.Array,
            prompt_mask: jax.Array, chunk: int) -> tuple[jax.Array, llama.KVCache]:
  """The prompts' cache and last logits, `chunk` tokens at a time.

  Chunk c attends to the slots up to its own end only, so a long prompt skips most of the
  attention scores the causal mask would discard, and the score tensor stays [chunk, slots].
  Each chunk is its own compiled call that updates the cache in place (donated): compiled as
  one program, XLA kept every chunk's temporaries alive at once, which grew with the square
  of the prompt length (WORKSPACE, "LameR").
  """
  prompts, length = prompt_ids.shape
  cache = llama.init_cache(model.config, prompts, length)
  for start in range(0, length, chunk):
    logits, cache = _prefill_chunk(model, params, prompt_ids, positions, prompt_mask, cache,
                                   start=start, end=min(start + chunk, length))
  return logits, cache


def generate(model: llama.Llama, params, prompt_ids: jax.Array, prompt_mask: jax.Array,
             keys: jax.Array, stop_ids: jax.Array, *, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, samples: int = 1,
             prefill_chunk: int = 256):
  """Generates up to `max_new_tokens` after each left-padded prompt, `samples` times each.

  A prompt is prefilled once (`prefill`) and its cache kept once, as the read-only prefix of
  its `samples` rows (row `i * samples + j` is sample j of prompt i); each row caches only
  what it generates. A LameR prompt is long and its answers short, so this saves
  (samples - 1) prefills and keeps one copy of the long cache instead of `samples`.

  Args:
    model: The module (static: its config is hashable).
    params: Its params.
    prompt_ids: [n, p] token ids, left-padded.
    prompt_mask: [n, p] 1 on real tokens.
    keys: [n * samples] PRNG keys, one per row (`row_keys`); unused when greedy.
    stop_ids: [k] token ids that end a row (the stop token is kept in the output).
    max_new_tokens: The most tokens a row generates.
    temperature: 0 for greedy decoding.
    top_p: Nucleus sampling mass (1: off).
    samples: Rows per prompt.
    prefill_chunk: Prompt tokens prefilled per call (`prefill`).

  Returns:
    (tokens [n * samples, max_new_tokens] with -1 after a row's end, lengths [n * samples]
    of generated tokens including the stop token).
  """
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0)
  logits, prefix = prefill(model, params, prompt_ids, positions, prompt_mask, prefill_chunk)
  return _decode(model, params, logits, prefix, prompt_mask, positions[:, -1] + 1, keys,
                 stop_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                 top_p=top_p, samples=samples)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature",
                                             "top_p", "samples"))
def _decode(model: llama.Llama, params, logits, prefix: llama.KVCache, prompt_mask,
            next_position, keys, stop_ids, *, max_new_tokens: int, temperature: float,
            top_p: float, samples: int):
  """The decoding loop of `generate` after the prefill: one token per iteration."""
  batch = prompt_mask.shape[0] * samples
  copy = functools.partial(jnp.repeat, repeats=samples, total_repeat_length=batch, axis=0)
  logits, next_position = copy(logits), copy(next_position)
  # Layers unrolled, a cache array per layer (`llama.unrolled_step`): the loop updates each
  # in place instead of copying a stacked cache every token.
  layer_params = llama.unstack_layers(params)
  prefixes = llama.unstack_cache(prefix)
  cache = llama.unstack_cache(llama.init_cache(model.config, batch, max_new_tokens))
  key_mask = jnp.zeros((batch, max_new_tokens), jnp.int32)
  tokens = jnp.full((batch, max_new_tokens), -1, jnp.int32)

  def not_finished(carry):
    step, _, _, _, _, done, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, logits, cache, key_mask, tokens, done, lengths = carry
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    token = sample_token(logits, step_keys, temperature, top_p)
    tokens = tokens.at[:, step].set(jnp.where(done, -1, token))
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.isin(token, stop_ids)
    key_mask = key_mask.at[:, step].set(1)
    logits, cache = llama.unrolled_step(model, params, layer_params, token[:, None],
                                        (next_position + step)[:, None], key_mask, cache,
                                        step, prefixes, prompt_mask)
    return step + 1, logits, cache, key_mask, tokens, done, lengths

  carry = (jnp.int32(0), logits, cache, key_mask, tokens, jnp.zeros(batch, bool),
           jnp.zeros(batch, jnp.int32))
  _, _, _, _, tokens, _, lengths = jax.lax.while_loop(not_finished, body, carry)
  return tokens, lengths
