"""Tokenisation with HF fast tokenizers, and length-bucketed padded batches.

Sorting texts by token length before batching keeps padding small (a 256-token batch of
20-token queries wastes 92% of its FLOPs); `length_bucketed_batches` yields the original
positions with every batch so callers restore the input order.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterator, Sequence

import numpy as np


def load_tokenizer(model_dir: str | os.PathLike):
  """The HF fast tokenizer stored in a model directory (tokenizer.json and friends)."""
  import transformers  # pylint: disable=g-import-not-at-top

  model_dir = pathlib.Path(model_dir)
  if not model_dir.is_dir():
    raise FileNotFoundError(f"tokenizer directory {model_dir} does not exist")
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
  if not tokenizer.is_fast:
    raise ValueError(f"{model_dir} has no fast tokenizer (tokenizer.json); convert it first")
  return tokenizer


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
  """Token ids of each text with special tokens, truncated to `max_length`, unpadded."""
  if max_length < 2:
    raise ValueError(f"max_length must be at least 2 (room for special tokens), got {max_length}")
  bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
  if bad:
    raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
  if not texts:
    return []  # HF fast tokenizers raise IndexError on an empty batch.
  encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                      return_attention_mask=False, return_token_type_ids=False)
  return encoded["input_ids"]


@dataclasses.dataclass(frozen=True)
class TokenBatch:
  """A padded batch. `indices[i]` is the input position of row i, or -1 for a filler row."""
  indices: np.ndarray          # [batch] int64
  input_ids: np.ndarray        # [batch, length] int32
  attention_mask: np.ndarray   # [batch, length] int32

  @property
  def num_real(self) -> int:
    return int(np.sum(self.indices >= 0))


def padded_length(length: int, multiple: int, max_length: int) -> int:
  """`length` rounded up to a multiple (bounds the number of compiled shapes), capped."""
  return min(max_length, -(-length // multiple) * multiple)


def length_bucketed_batches(token_ids: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                            max_length: int, pad_to_multiple_of: int = 16,
                            fill_last: bool = True) -> Iterator[TokenBatch]:
  """Batches of similar-length sequences, longest first, padded to a length bucket.

  Args:
    token_ids: Unpadded token id sequences, each at most `max_length` long.
    batch_size: Rows per batch.
    pad_id: The tokenizer's padding id.
    max_length: The cap on padded length.
    pad_to_multiple_of: Round padded lengths up to a multiple of this, so a corpus compiles
      a handful of shapes rather than one per length.
    fill_last: Pad the last batch to `batch_size` with filler rows (index -1) so every batch
      has one shape and divides evenly over devices.

  Yields:
    TokenBatch, longest sequences first (the first batch shows the peak memory at once).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
  if lengths.size and lengths.max() > max_length:
    raise ValueError(f"a sequence has {lengths.max()} tokens, more than max_length={max_length}")
  # Stable sort by decreasing length: equal lengths keep input order (determinism).
  order = np.argsort(-lengths, kind="stable")
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    width = padded_length(max(int(lengths[rows].max()), 1), pad_to_multiple_of, max_length)
    num_rows = batch_size if fill_last else len(rows)
    input_ids = np.full((num_rows, width), pad_id, dtype=np.int32)
    mask = np.zeros((num_rows, width), dtype=np.int32)
    for r, i in enumerate(rows):
      input_ids[r, :lengths[i]] = token_ids[i]
      mask[r, :lengths[i]] = 1
    indices = np.full(num_rows, -1, dtype=np.int64)
    indices[:len(rows)] = rows
    yield TokenBatch(indices=indices, input_ids=input_ids, attention_mask=mask)
