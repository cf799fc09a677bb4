"""RetroMAE's batches: token streams cut into full blocks, each masked twice (`masking`).

A block is `[CLS] t_1 … t_{L-2} [SEP]` with L = `block_length`: the streams
(`text_sources.token_streams`, one per source) are cut into consecutive pieces of L - 2 tokens and
the tail shorter than that is dropped, so every block is full and a batch has no padding.
(The reference's `preprocess.py` packs whole sentences until a block reaches its length,
then the collator truncates the block to it; cutting the stream keeps every token but lets a
block start mid-sentence.) Each epoch visits every block of every source once, in an order
seeded by (seed, epoch), as the Trainer's shuffled sampler over the concatenated data sets.

Example e (the e-th of the run, over all epochs) draws its masks from
`default_rng([seed, e, stream])`, so any process builds any example, a batch is a function of
its step, and a resumed run continues exactly.

Batch entries ([local_batch, L], the visibility [local_batch, L, L] bool):
`encoder_input_ids` (corrupted), `attention_mask`, `encoder_labels`, `decoder_input_ids`
(the block as it is), `decoder_visibility`, `decoder_labels`; for the host `example_index`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from retrieval_jax.data import masking
from retrieval_jax.data import pairs

POSITION_FIELDS = ("step", "epoch", "batch_in_epoch", "examples_seen", "num_blocks")
_EXAMPLE_STREAM = 7
_ORDER_STREAM = 8


def continuation_table(tokenizer) -> np.ndarray:
  """bool [vocab]: the token continues the word before it.

  WordPiece marks continuations (`##ing`); byte-level BPE and SentencePiece mark word starts
  (`Ġ`, `▁`), so there every unmarked piece continues.
  """
  vocab = tokenizer.get_vocab()
  table = np.zeros(max(vocab.values()) + 1, bool)
  pieces = list(vocab)
  if any(p.startswith("##") for p in pieces):
    for piece, index in vocab.items():
      table[index] = piece.startswith("##")
    return table
  for marker in ("Ġ", "▁"):
    if any(p.startswith(marker) for p in pieces):
      for piece, index in vocab.items():
        table[index] = not piece.startswith(marker)
      return table
  raise ValueError("the tokenizer marks neither word pieces (##) nor word starts (Ġ, ▁): "
                   "whole-word masking needs one of them")


class BlockMaskBatcher:
  """Process-local RetroMAE batches by global step (module docstring)."""
  host_keys = frozenset({"example_index"})

  def __init__(self, streams: Sequence[np.ndarray], *, cls_id: int, sep_id: int, mask_id: int,
               vocab_size: int, continuation: np.ndarray, block_length: int,
               settings: masking.MaskingSettings, global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    """Checks the arguments.

    Args:
      streams: Token streams without special tokens, one per source.
      cls_id: Opens each block.
      sep_id: Closes each block.
      mask_id: The [MASK] id.
      vocab_size: Random replacements are drawn from [0, vocab_size).
      continuation: `continuation_table(tokenizer)`.
      block_length: L, special tokens included (`data.max_length`).
      settings: The masking.
      global_batch: Examples per step over all processes (`train.batch_size`).
      seed: The run's seed, >= 0.
      process_index: This process.
      process_count: Processes sharing the global batch.

    Raises:
      ValueError: An invalid argument, naming its config key.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                       f"{process_count}")
    if global_batch < 1 or global_batch % process_count:
      raise ValueError(f"train.batch_size ({global_batch}) must be a positive multiple of the "
                       f"number of processes ({process_count})")
    if seed < 0:
      raise ValueError(f"seed must be non-negative, got {seed}")
    if block_length < 3:
      raise ValueError(f"data.max_length={block_length} leaves no room for a token between "
                       "[CLS] and [SEP]")
    if not streams:
      raise ValueError("no token streams to mask")
    self.streams = [np.asarray(s, np.int32) for s in streams]
    self.piece = block_length - 2
    self.blocks = np.asarray([len(s) // self.piece for s in self.streams], np.int64)
    total = int(self.blocks.sum())
    if global_batch > total:
      raise ValueError(f"train.batch_size ({global_batch}) exceeds the {total} blocks of "
                       f"data.max_length={block_length} in the sources")
    self._first_block = np.concatenate([[0], np.cumsum(self.blocks)])
    self.continuation = np.asarray(continuation, bool)
    self.cls_id, self.sep_id, self.mask_id = int(cls_id), int(sep_id), int(mask_id)
    self.vocab_size = int(vocab_size)
    self.block_length = block_length
    self.settings = settings
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self._steps_per_epoch = total // global_batch
    self._cached_order: tuple[int, np.ndarray] | None = None

  @property
  def steps_per_epoch(self) -> int:
    return self._steps_per_epoch

  def _order(self, epoch: int) -> np.ndarray:
    cached = self._cached_order
    if cached is None or cached[0] != epoch:
      order = np.random.default_rng([self.seed, epoch, _ORDER_STREAM]).permutation(
          int(self.blocks.sum()))
      self._cached_order = cached = (epoch, order)
    return cached[1]

  def block(self, example: int) -> np.ndarray:
    """The ids of global example `example`'s block, [CLS] and [SEP] included."""
    per_epoch = self._steps_per_epoch * self.global_batch
    epoch, index = divmod(example, per_epoch)
    block = int(self._order(epoch)[index])
    source = int(np.searchsorted(self._first_block, block, side="right")) - 1
    start = (block - int(self._first_block[source])) * self.piece
    body = self.streams[source][start:start + self.piece]
    return np.concatenate([[self.cls_id], body, [self.sep_id]]).astype(np.int32)

  def example(self, example: int) -> dict[str, np.ndarray]:
    """One example's arrays (module docstring), unbatched."""
    ids = self.block(example)
    rng = np.random.default_rng([self.seed, example, _EXAMPLE_STREAM])
    special = np.zeros(len(ids), bool)
    special[[0, -1]] = True
    words = masking.word_ids(self.continuation[ids], special)
    encoder_mask = masking.whole_word_masks(words, self.settings.encoder_ratio, 1, rng,
                                            self.settings.max_predictions)[0]
    inputs, labels = masking.corrupt(ids, encoder_mask, rng, mask_id=self.mask_id,
                                     vocab_size=self.vocab_size, settings=self.settings)
    return {"encoder_input_ids": inputs, "attention_mask": np.ones(len(ids), np.int32),
            "encoder_labels": labels, "decoder_input_ids": ids,
            "decoder_visibility": masking.decoder_visibility(words, rng, self.settings),
            "decoder_labels": masking.decoder_labels(ids)}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    first = step * self.global_batch + self.process_index * self.local_batch
    rows = [self.example(first + i) for i in range(self.local_batch)]
    out = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    out["example_index"] = np.arange(first, first + self.local_batch)
    return out

  def position(self, step: int) -> dict[str, int]:
    """The data position after `step` steps (JSON, saved in checkpoints)."""
    epoch, in_epoch = divmod(int(step), self._steps_per_epoch)
    return {"step": int(step), "epoch": epoch, "batch_in_epoch": in_epoch,
            "examples_seen": int(step) * self.global_batch,
            "num_blocks": int(self.blocks.sum())}

  def check_position(self, position: Mapping[str, int]) -> None:
    """Raises ValueError when a restored position is not where this batcher would be."""
    pairs.check_position_fields(
        position, self.position, POSITION_FIELDS,
        lambda expected: (f"(train.batch_size {self.global_batch}, {expected['num_blocks']} "
                          f"blocks); did the batch size, the data or data.max_length change?"))

  def iterate(self, start_step: int, end_step: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(step, batch) for step in [start_step, end_step), the next batch built in a thread."""
    return pairs.prefetched_batches(self.batch, start_step, end_step, "retromae_batches")
