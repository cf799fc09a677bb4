"""data/masking.py: RetroMAE's whole-word masks, 80/10/10 corruption and decoder rows."""

import numpy as np
import pytest

from retrieval_jax.data import masking

# [CLS] the quick ##est fox ##es jump ##ed [SEP]
CONTINUATION = np.array([0, 0, 0, 1, 0, 1, 0, 1, 0], bool)
SPECIAL = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1], bool)


def _reference_selection(lengths, budget):
  """The loop of transformers 4.x `DataCollatorForWholeWordMask._whole_word_mask`."""
  selection, used = np.zeros(len(lengths), bool), 0
  for i, length in enumerate(lengths):
    if used >= budget:
      break
    if used + length > budget:
      continue
    selection[i] = True
    used += length
  return selection


def test_word_ids_group_pieces_and_skip_specials():
  ids = masking.word_ids(CONTINUATION, SPECIAL)
  np.testing.assert_array_equal(ids, [-1, 0, 1, 1, 2, 2, 3, 3, -1])
  # A block that opens on a `##` piece: that piece is a word of its own, as the reference.
  np.testing.assert_array_equal(
      masking.word_ids([0, 1, 1, 0, 0], [1, 0, 0, 0, 1]), [-1, 0, 0, 1, -1])


def test_greedy_selection_equals_the_reference_loop():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 5, size=(500, 40))
  for budget in (1, 7, 30, 200):
    got = masking.greedy_word_selection(lengths, budget)
    for row, expected_row in zip(got, lengths):
      np.testing.assert_array_equal(row, _reference_selection(expected_row, budget))


def test_whole_word_masks_keep_words_whole_and_meet_the_budget():
  rng = np.random.default_rng(1)
  continuation = rng.random(200) < 0.3
  special = np.zeros(200, bool)
  special[[0, -1]] = True
  ids = masking.word_ids(continuation, special)
  masks = masking.whole_word_masks(ids, 0.3, 2000, rng)
  assert not masks[:, special].any()
  for word in range(ids.max() + 1):  # a word is masked whole or not at all
    column = masks[:, ids == word]
    assert np.all(column.all(axis=1) | ~column.any(axis=1))
  budget = round(200 * 0.3)
  counts = masks.sum(axis=1)
  assert counts.max() <= budget and np.mean(counts == budget) > 0.95
  # Every word is equally likely: per-token rates depend only on the word's length.
  single = np.flatnonzero(np.bincount(ids[ids >= 0]) == 1)
  rates = masks[:, np.isin(ids, single)].mean(axis=0)
  assert np.abs(rates - rates.mean()).max() < 0.05


def test_corruption_is_80_10_10_and_labels_only_masked():
  rng = np.random.default_rng(2)
  ids = rng.integers(1000, 2000, size=200_000)
  masked = rng.random(ids.shape) < 0.3
  inputs, labels = masking.corrupt(ids, masked, rng, mask_id=103, vocab_size=30522)
  np.testing.assert_array_equal(labels[masked], ids[masked])
  assert (labels[~masked] == masking.IGNORE).all() and (inputs[~masked] == ids[~masked]).all()
  replaced = inputs[masked] == 103
  changed = (inputs[masked] != ids[masked]) & ~replaced
  kept = inputs[masked] == ids[masked]
  assert abs(replaced.mean() - 0.8) < 0.01
  assert abs(changed.mean() - 0.1) < 0.01  # a random id equal to the original counts as kept
  assert abs(kept.mean() - 0.1) < 0.01


def test_decoder_rows_hide_themselves_see_cls_and_half_the_rest():
  rng = np.random.default_rng(3)
  length = 300
  continuation = rng.random(length) < 0.2
  special = np.zeros(length, bool)
  special[[0, -1]] = True
  ids = masking.word_ids(continuation, special)
  visible = masking.decoder_visibility(ids, rng)
  assert visible.shape == (length, length)
  assert not visible[np.arange(length), np.arange(length)].any()
  assert visible[1:, 0].all() and visible[:-1, -1].all()  # [CLS] and [SEP] are never masked
  hidden_per_row = (~visible).sum(axis=1)
  budget = round(length * 0.5)
  # The row's own position is hidden on top of its mask, unless the mask already held it.
  assert np.all((hidden_per_row == budget) | (hidden_per_row == budget + 1))
  # Rows draw their masks from a pool of min(length, 256): rows differ.
  assert len({row.tobytes() for row in visible}) > 200


def test_decoder_labels_skip_cls_and_sep():
  np.testing.assert_array_equal(masking.decoder_labels(np.array([101, 5, 6, 102])),
                                [-100, 5, 6, -100])


@pytest.mark.parametrize("kwargs, key", [
    ({"encoder_ratio": 1.5}, "encoder_ratio"),
    ({"mask_replace": 0.95, "random_replace": 0.1}, "mask_replace"),
    ({"decoder_pool": 0}, "decoder_pool"),
])
def test_invalid_settings_name_their_key(kwargs, key):
  with pytest.raises(ValueError, match=f"data.masking.{key}"):
    masking.MaskingSettings(**kwargs)
