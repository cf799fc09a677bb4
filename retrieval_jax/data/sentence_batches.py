"""Batches of single sentences (SG-OPT): every sentence once per epoch, in a seeded order.

Each epoch visits the sentences in `pairs.epoch_order(n, seed, epoch)` order, `global_batch`
at a time; the remainder that fills no batch is dropped, so every step has one shape. A
batch is a function of its step alone, so any process builds its own rows and a resumed run
continues exactly. Rows are padded to the longest sentence of the global batch, rounded up
to `pad_to_multiple_of` (few compiled shapes), the same width on every process.

Batch entries ([local_batch, width] int32): `input_ids`, `attention_mask`; for the host,
`example_index` (the sentence's position in the list).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from retrieval_jax.data import pairs
from retrieval_jax.data import tokenize as tok

POSITION_FIELDS = ("step", "epoch", "batch_in_epoch", "examples_seen", "num_examples")


class SentenceBatcher:
  """Process-local batches of tokenised sentences by global step (module docstring)."""
  host_keys = frozenset({"example_index"})

  def __init__(self, token_ids: Sequence[Sequence[int]], *, global_batch: int, seed: int,
               pad_id: int, max_length: int, pad_to_multiple_of: int = 8,
               process_index: int = 0, process_count: int = 1):
    """Args:
      token_ids: Each sentence's token ids with special tokens, at most `max_length` long.
      global_batch: Sentences per step over all processes (divisible by `process_count`).
      seed: The run seed (the epoch order's).
      pad_id: The tokenizer's padding id.
      max_length: The longest padded width.
      pad_to_multiple_of: Padded widths are multiples of this (capped at `max_length`).
      process_index: This process.
      process_count: Processes sharing each global batch.
    """
    if global_batch % process_count:
      raise ValueError(f"train.batch_size={global_batch} must divide over {process_count} "
                       "processes")
    too_long = [i for i, ids in enumerate(token_ids) if len(ids) > max_length]
    if too_long:
      raise ValueError(f"sentence {too_long[0]} has {len(token_ids[too_long[0]])} tokens, more "
                       f"than max_length={max_length}")
    self.token_ids = [list(ids) for ids in token_ids]
    self.global_batch = int(global_batch)
    self._steps_per_epoch = pairs.steps_per_epoch(len(self.token_ids), self.global_batch)
    self.seed = int(seed)
    self.pad_id = int(pad_id)
    self.max_length = int(max_length)
    self.multiple = int(pad_to_multiple_of)
    self.local_batch = self.global_batch // process_count
    self.process_index = int(process_index)

  @property
  def steps_per_epoch(self) -> int:
    return self._steps_per_epoch

  def global_rows(self, step: int) -> np.ndarray:
    """The sentence indices of the global batch of `step` (int64 [global_batch])."""
    epoch, b = pairs.step_position(step, self._steps_per_epoch)
    order = pairs.epoch_order(len(self.token_ids), seed=self.seed, epoch=epoch)
    return order[b * self.global_batch:(b + 1) * self.global_batch]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the batch of `step`."""
    rows = self.global_rows(step)
    width = tok.padded_length(max(len(self.token_ids[r]) for r in rows), self.multiple,
                              self.max_length)
    mine = rows[self.process_index * self.local_batch:(self.process_index + 1) * self.local_batch]
    input_ids, mask = pairs.pad_rows([self.token_ids[r] for r in mine], width, self.pad_id)
    return {"input_ids": input_ids, "attention_mask": mask,
            "example_index": mine.astype(np.int64)}

  def position(self, step: int) -> dict[str, int]:
    """The data position after `step` steps (JSON, saved in checkpoints)."""
    epoch, b = pairs.step_position(step, self._steps_per_epoch)
    return {"step": int(step), "epoch": int(epoch), "batch_in_epoch": int(b),
            "examples_seen": int(step) * self.global_batch,
            "num_examples": len(self.token_ids)}

  def check_position(self, position: Mapping[str, int]) -> None:
    """Raises ValueError when a restored position is not where this batcher would be."""
    pairs.check_position_fields(
        position, self.position, POSITION_FIELDS,
        lambda expected: (f"for step {expected['step']} (train.batch_size {self.global_batch}, "
                          f"{len(self.token_ids)} sentences); did the batch size or the data "
                          "change?"))

  def iterate(self, start_step: int, end_step: int
              ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(step, batch) for step in [start_step, end_step), the next one built in a thread."""
    return pairs.prefetched_batches(self.batch, start_step, end_step, "sentence_batches")
