"""RetroMAE's masking: whole-word masks, BERT's 80/10/10 corruption, the decoder's row masks.

As staoxiao/RetroMAE `src/pretrain/data.py` (`RetroMAECollator`) with the
`DataCollatorForWholeWordMask` of transformers 4.x it was written against (transformers 5
replaced that sampler with a per-word Bernoulli draw and dropped random replacement under
whole-word masking, so it is re-implemented here, not imported):

* **Whole-word mask** of a block `[CLS] t_1 … t_n [SEP]`: a word is a token plus the `##`
  pieces that follow it; special tokens are never candidates. The words are shuffled and taken
  greedily while they fit into `round(len(block) * ratio)` tokens (the count includes the two
  special tokens, as the reference's), a word that would overshoot is skipped and later
  shorter ones may still fill the budget; at most `max_predictions` tokens.
* **Encoder input**: the whole-word mask at `encoder_ratio` (0.3); each masked token becomes
  [MASK] with probability 0.8, a uniformly random id of the vocabulary with 0.1, stays itself
  otherwise; labels are the original ids at masked positions, -100 elsewhere.
* **Decoder rows** (enhanced decoding): `min(len, 256)` whole-word masks at `decoder_ratio`
  (0.5) are drawn per block; row i takes one of them at random and also hides position i.
  Row i attends to the positions its mask leaves visible, so [CLS] (never masked) is visible
  to every other row and padding (outside the block) to none. Decoder labels are every
  token but [CLS] and [SEP].

Pure NumPy, seeded by the caller's `np.random.Generator`; no JAX.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IGNORE = -100  # the label of a position without a loss (PyTorch's cross-entropy default)


@dataclasses.dataclass(frozen=True)
class MaskingSettings:
  """RetroMAE's masking settings (`config.data.masking`); the defaults are the paper's."""
  encoder_ratio: float = 0.3
  decoder_ratio: float = 0.5
  mask_replace: float = 0.8  # of the masked tokens: [MASK]
  random_replace: float = 0.1  # of the masked tokens: a random id; the rest stay themselves
  max_predictions: int = 512
  decoder_pool: int = 256  # whole-word masks drawn per block for the decoder's rows

  def __post_init__(self):
    for name in ("encoder_ratio", "decoder_ratio", "mask_replace", "random_replace"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"data.masking.{name}={value} must lie in [0, 1]")
    if self.mask_replace + self.random_replace > 1.0:
      raise ValueError(f"data.masking.mask_replace + random_replace = "
                       f"{self.mask_replace + self.random_replace} exceeds 1")
    for name in ("max_predictions", "decoder_pool"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"data.masking.{name}={getattr(self, name)} must be >= 1")


def word_ids(continuation: np.ndarray, special: np.ndarray) -> np.ndarray:
  """Word index of each position (0, 1, …), -1 at special tokens.

  Args:
    continuation: bool [L], True where a token continues the word before it (`##…`).
    special: bool [L], True at [CLS], [SEP] and any other special token.
  """
  continuation = np.asarray(continuation, bool)
  special = np.asarray(special, bool)
  candidate = ~special
  # A `##` piece opens a word when no word is open yet (the reference's empty cand_indexes).
  opened_before = np.cumsum(candidate) - candidate > 0
  starts = candidate & ~(continuation & opened_before)
  ids = np.cumsum(starts) - 1
  return np.where(special, -1, ids)


def greedy_word_selection(lengths_in_order: np.ndarray, budget: int) -> np.ndarray:
  """Which words (in the given shuffled order) the reference's greedy loop takes.

  Args:
    lengths_in_order: int [M, W], each row one shuffled order of the words' lengths.
    budget: the number of tokens to predict.

  Returns:
    bool [M, W]: taken, in the same order. Words are taken while they fit; one that would
    overshoot is skipped; the loop stops once the budget is met.
  """
  lengths = np.asarray(lengths_in_order, np.int64)
  if lengths.shape[1] == 0:
    return np.zeros(lengths.shape, bool)
  totals = np.cumsum(lengths, axis=1)
  taken = totals <= budget  # the prefix the loop takes before its first overshoot
  used = np.where(taken, lengths, 0).sum(axis=1)
  first_skip = taken.sum(axis=1)  # the prefix is contiguous: its length is the first skip
  after = np.arange(lengths.shape[1])[None, :] >= first_skip[:, None]
  # Past the first skip the remaining room is smaller than that word; each pass takes, per
  # row, the next word that still fits, so at most `room` passes (every word has a token).
  while True:
    room = budget - used
    fits = after & ~taken & (lengths <= room[:, None]) & (room[:, None] > 0)
    rows = fits.any(axis=1)
    if not rows.any():
      return taken
    first = np.argmax(fits, axis=1)
    picked = np.zeros_like(taken)
    picked[np.flatnonzero(rows), first[rows]] = True
    # Words before the picked one were skipped for good (they did not fit then, and room
    # only shrinks), so the scan resumes after it.
    after = after & (np.arange(lengths.shape[1])[None, :] > np.where(rows, first, -1)[:, None])
    taken |= picked
    used = used + np.where(rows, lengths[np.arange(len(first)), first], 0)


def prediction_budget(length: int, ratio: float, max_predictions: int = 512) -> int:
  """The most tokens a whole-word mask of a `length`-token block covers (module docstring)."""
  return min(int(max_predictions), max(1, int(round(length * ratio))))


def whole_word_masks(ids_of_words: np.ndarray, ratio: float, count: int,
                     rng: np.random.Generator, max_predictions: int = 512) -> np.ndarray:
  """`count` independent whole-word masks of one block (bool [count, L])."""
  ids_of_words = np.asarray(ids_of_words)
  num_words = int(ids_of_words.max()) + 1 if ids_of_words.size else 0
  length = ids_of_words.shape[0]
  budget = prediction_budget(length, ratio, max_predictions)
  if num_words == 0:
    return np.zeros((count, length), bool)
  word_lengths = np.bincount(ids_of_words[ids_of_words >= 0], minlength=num_words)
  orders = np.argsort(rng.random((count, num_words)), axis=1)
  taken_in_order = greedy_word_selection(word_lengths[orders], budget)
  taken = np.zeros((count, num_words), bool)
  np.put_along_axis(taken, orders, taken_in_order, axis=1)
  safe = np.maximum(ids_of_words, 0)
  return taken[:, safe] & (ids_of_words >= 0)[None, :]


def corrupt(ids: np.ndarray, masked: np.ndarray, rng: np.random.Generator, *, mask_id: int,
            vocab_size: int, settings: MaskingSettings = MaskingSettings()):
  """BERT's corruption of the masked positions: (inputs, labels) with -100 off the mask."""
  ids = np.asarray(ids)
  masked = np.asarray(masked, bool)
  labels = np.where(masked, ids, IGNORE)
  draw = rng.random(ids.shape)
  to_mask = masked & (draw < settings.mask_replace)
  to_random = masked & ~to_mask & (draw < settings.mask_replace + settings.random_replace)
  inputs = np.where(to_mask, mask_id, ids)
  inputs = np.where(to_random, rng.integers(0, vocab_size, ids.shape), inputs)
  return inputs.astype(ids.dtype), labels.astype(np.int32)


def decoder_visibility(ids_of_words: np.ndarray, rng: np.random.Generator,
                       settings: MaskingSettings = MaskingSettings()) -> np.ndarray:
  """bool [L, L]: row i attends to column j (enhanced decoding, module docstring)."""
  length = np.asarray(ids_of_words).shape[0]
  pool = whole_word_masks(ids_of_words, settings.decoder_ratio, min(length, settings.decoder_pool),
                          rng, settings.max_predictions)
  hidden = pool[rng.integers(0, pool.shape[0], length)]
  hidden[np.arange(length), np.arange(length)] = True
  return ~hidden


def decoder_labels(ids: np.ndarray) -> np.ndarray:
  """Every token of a `[CLS] … [SEP]` block but the first and the last (-100 there)."""
  labels = np.asarray(ids).astype(np.int32).copy()
  labels[[0, -1]] = IGNORE
  return labels
