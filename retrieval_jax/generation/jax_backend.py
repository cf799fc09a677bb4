"""The in-process generation backend: a `causal_lm.CausalLM` decoded with `decode.generate`.

Prompts are rendered with the tokenizer's chat template (chat prompts) or taken as they are
(strings), sorted by length and decoded in fixed-size batches whose prompt length is rounded
up to a multiple of `length_multiple`, so a long run compiles a handful of shapes, not one
per batch. With a mesh the batch is split over its `data` axis and the params replicated.
At temperature 0 the N completions of a prompt are one decoding, copied.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from retrieval_jax.generation import decode
from retrieval_jax.generation.backend import Prompt, Sampling, sample_seed
from retrieval_jax.models.causal_lm import CausalLM

logger = logging.getLogger(__name__)


class JaxBackend:
  """Generates with a Flax Llama in this process.

  Args:
    lm: The loaded model (`causal_lm.load`).
    batch_size: Rows decoded at once (a multiple of the mesh's data axis).
    max_prompt_tokens: Longer rendered prompts are an error (the caller shortens them).
    length_multiple: Prompt lengths are padded up to a multiple of this.
    mesh: Optional device mesh; the batch goes over its `data` axis.
    progress: Called after each batch with the prompts it finished (a fraction when a
      prompt's samples span batches).
  """

  def __init__(self, lm: CausalLM, batch_size: int = 8, max_prompt_tokens: int = 2048,
               length_multiple: int = 64, mesh: Mesh | None = None,
               progress: Callable[[int], None] | None = None):
    self.lm = lm
    self.model_id = f"jax:{lm.name}"
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

  def _decode_batch(self, rows: list[tuple[list[int], int, int]], sampling: Sampling):
    """rows: (prompt ids, prompt hash, sample index) -> generated texts."""
    count = len(rows)
    rows = rows + [rows[-1]] * (self.batch_size - count)  # a fixed batch shape
    longest = max(len(ids) for ids, _, _ in rows)
    length = -(-longest // self.length_multiple) * self.length_multiple
    ids = np.zeros((self.batch_size, length), np.int32)
    mask = np.zeros((self.batch_size, length), np.int32)
    for r, (tokens, _, _) in enumerate(rows):
      ids[r, length - len(tokens):] = tokens  # left padding
      mask[r, length - len(tokens):] = 1
    keys = decode.row_keys(sampling.seed, np.array([h for _, h, _ in rows], np.uint32),
                           np.array([i for _, _, i in rows], np.uint32))
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    if self.mesh is not None:
      batch = NamedSharding(self.mesh, P("data"))
      ids, mask, keys = (jax.device_put(x, batch) for x in (ids, mask, keys))
    tokens, lengths = decode.generate(
        self.lm.module, self.params, ids, mask, keys, jnp.asarray(self.lm.stop_ids, jnp.int32),
        max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
        top_p=sampling.top_p)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    texts = []
    for r in range(count):
      text = self.lm.tokenizer.decode(tokens[r, :lengths[r]].tolist(), skip_special_tokens=True)
      for stop in sampling.stop:  # stop strings end the text where they first appear
        text = text.split(stop, 1)[0]
      texts.append(text)
    return texts

  def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[str]]:
    rendered = [self.render(p) for p in prompts]
    for p, ids in enumerate(rendered):
      if len(ids) > self.max_prompt_tokens:
        raise ValueError(f"prompt {p} has {len(ids)} tokens, more than max_prompt_tokens="
                         f"{self.max_prompt_tokens}; shorten it (fewer or shorter passages)")
    draws = 1 if sampling.temperature == 0 else sampling.n
    rows = [(p, i) for p in range(len(prompts)) for i in range(draws)]
    rows.sort(key=lambda row: len(rendered[row[0]]))  # similar lengths share a batch
    # A stable per-prompt number (the seed itself is folded in by `row_keys`).
    hashes = [sample_seed(Sampling(seed=0), prompts[p], 0) for p in range(len(prompts))]
    out: dict[tuple[int, int], str] = {}
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start:start + self.batch_size]
      texts = self._decode_batch([(rendered[p], hashes[p], i) for p, i in chunk], sampling)
      out.update(zip(chunk, texts))
      if self.progress:  # in prompts: a prompt's N samples count as one
        self.progress(len(chunk) / draws)
    return [[out[(p, i if draws > 1 else 0)] for i in range(sampling.n)]
            for p in range(len(prompts))]
