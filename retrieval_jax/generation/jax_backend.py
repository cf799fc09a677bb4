"""The in-process generation backend: a `causal_lm.CausalLM` decoded with `decode.generate`.

Prompts are rendered with the tokenizer's chat template (chat prompts) or taken as they are
(strings), sorted by length and decoded in fixed-size batches (a last part batch: the next
power of two) whose prompt length is rounded up to a multiple of `length_multiple`, so a
long run compiles a handful of shapes, not one per batch. With a mesh the batch is split
over its `data` axis and the params replicated.
A prompt is prefilled once for its N samples; at temperature 0 the N completions are one
decoding, copied.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from retrieval_jax.generation import decode
from retrieval_jax.generation.backend import Prompt, Sampling, draws, prompt_hash
from retrieval_jax.models.causal_lm import CausalLM

logger = logging.getLogger(__name__)


def tokenizer_fingerprint(tokenizer) -> str:
  """A short hash of how `tokenizer` turns chat prompts into ids (its pipeline, vocabulary
  and chat template)."""
  backend = getattr(tokenizer, "backend_tokenizer", None)
  text = backend.to_str() if backend is not None else json.dumps(
      sorted(tokenizer.get_vocab().items()))
  text += "\0" + str(getattr(tokenizer, "chat_template", None))
  return hashlib.sha256(text.encode()).hexdigest()[:12]


class JaxBackend:
  """Generates with a Flax Llama in this process.

  Args:
    lm: The loaded model (`causal_lm.load`).
    batch_size: Rows decoded at once (a multiple of the mesh's data axis): with N samples,
      batch_size // N prompts, each prefilled once and copied to its N rows.
    max_prompt_tokens: Longer rendered prompts are an error (the caller shortens them).
    length_multiple: Prompt lengths are padded up to a multiple of this.
    max_batch_prompts: At most this many prompts a batch (None: no cap). Each prompt is
      prefilled and cached whole, so this bounds a batch's memory when greedy decoding
      would otherwise put `batch_size` long prompts in one batch.
    mesh: Optional device mesh; the batch goes over its `data` axis.
    progress: Called after each batch with the number of prompts it finished.
  """

  def __init__(self, lm: CausalLM, batch_size: int = 8, max_prompt_tokens: int = 2048,
               length_multiple: int = 64, max_batch_prompts: int | None = None,
               mesh: Mesh | None = None, progress: Callable[[int], None] | None = None):
    self.lm = lm
    self.max_batch_prompts = max_batch_prompts
    # The tokenizer is part of what generates: a cached completion of a prompt tokenised
    # otherwise is not this backend's.
    self.model_id = f"jax:{lm.name}:tokenizer-{tokenizer_fingerprint(lm.tokenizer)}"
    self.batch_size, self.max_prompt_tokens = batch_size, max_prompt_tokens
    self.length_multiple, self.mesh, self.progress = length_multiple, mesh, progress
    if mesh is not None:
      if batch_size % mesh.shape["data"]:
        raise ValueError(f"batch_size={batch_size} is not a multiple of the mesh's data axis "
                         f"({mesh.shape['data']})")
      self.params = jax.device_put(lm.params, NamedSharding(mesh, P()))
    else:
      self.params = lm.params

  def render(self, prompt: Prompt) -> list[int]:
    """The token ids of a prompt as the model sees it (chat template applied)."""
    tokenizer = self.lm.tokenizer
    if isinstance(prompt, str):
      return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.chat_template is None:
      raise ValueError(f"model {self.lm.name} has no chat template: give string prompts")
    text = tokenizer.apply_chat_template(list(prompt), tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]

  def prompts_per_batch(self, rows: int) -> int:
    """Prompts decoded together: each brings its `rows` rows (one prefill, copied)."""
    prompts = max(1, self.batch_size // rows)
    if not self.max_batch_prompts or prompts <= self.max_batch_prompts:
      return prompts
    devices = 1 if self.mesh is None else self.mesh.shape["data"]
    for capped in range(self.max_batch_prompts, 0, -1):
      if (capped * rows) % devices == 0:  # the rows split evenly over the data axis
        return capped
    raise ValueError(f"max_batch_prompts={self.max_batch_prompts}: no batch of at most that "
                     f"many prompts x {rows} rows splits over the mesh's {devices} devices")

  def batch_prompts(self, count: int, rows: int) -> int:
    """Prompts in the decoded batch for `count` prompts: a full batch (one shape, one
    compile), or for a last part batch the next power of two, so little is padding."""
    full = self.prompts_per_batch(rows)
    if count >= full or self.mesh is not None:  # a mesh needs whole batches of rows
      return full
    return min(full, 1 << max(count - 1, 0).bit_length())

  def _decode_batch(self, prompts: list[tuple[list[int], int]], rows: int,
                    sampling: Sampling) -> list[list[str]]:
    """prompts: (token ids, prompt hash) -> `rows` texts each."""
    count = len(prompts)
    prompts = prompts + [prompts[-1]] * (self.batch_prompts(count, rows) - count)
    longest = max(len(ids) for ids, _ in prompts)
    length = -(-longest // self.length_multiple) * self.length_multiple
    ids = np.zeros((len(prompts), length), np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for r, (tokens, _) in enumerate(prompts):
      ids[r, length - len(tokens):] = tokens  # left padding
      mask[r, length - len(tokens):] = 1
    hashes = np.repeat(np.array([h for _, h in prompts], np.uint32), rows)
    keys = decode.row_keys(sampling.seed, hashes,
                           np.tile(np.arange(rows, dtype=np.uint32), len(prompts)))
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    if self.mesh is not None:
      by_row = NamedSharding(self.mesh, P("data"))
      keys = jax.device_put(keys, by_row)
      if len(prompts) % self.mesh.shape["data"] == 0:  # else the prompts stay replicated
        ids, mask = (jax.device_put(x, by_row) for x in (ids, mask))
    tokens, lengths = decode.generate(
        self.lm.module, self.params, ids, mask, keys, jnp.asarray(self.lm.stop_ids, jnp.int32),
        max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
        top_p=sampling.top_p, samples=rows)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    texts = []
    for r in range(count * rows):
      text = self.lm.tokenizer.decode(tokens[r, :lengths[r]].tolist(), skip_special_tokens=True)
      for stop in sampling.stop:  # stop strings end the text where they first appear
        text = text.split(stop, 1)[0]
      texts.append(text)
    return [texts[i * rows:(i + 1) * rows] for i in range(count)]

  def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[str]]:
    rendered = [self.render(p) for p in prompts]
    for p, ids in enumerate(rendered):
      if len(ids) > self.max_prompt_tokens:
        raise ValueError(f"prompt {p} has {len(ids)} tokens, more than max_prompt_tokens="
                         f"{self.max_prompt_tokens}; shorten it (fewer or shorter passages)")
    count = draws(sampling)
    order = sorted(range(len(prompts)), key=lambda p: len(rendered[p]))  # similar lengths
    hashes = [prompt_hash(p) for p in prompts]  # the seed is folded in by `row_keys`
    out: dict[int, list[str]] = {}
    step = self.prompts_per_batch(count)
    for start in range(0, len(order), step):
      chunk = order[start:start + step]
      texts = self._decode_batch([(rendered[p], hashes[p]) for p in chunk], count, sampling)
      out.update(zip(chunk, texts))
      if self.progress:
        self.progress(len(chunk))
    return [out[p] * (sampling.n // count) for p in range(len(prompts))]
