"""`data.sentence_batches.SentenceBatcher`: epochs, padding, processes, resume positions."""

import numpy as np
import pytest

from retrieval_jax.data import sentence_batches

PAD = 0


def _sentences(n=23, seed=0):
  rng = np.random.default_rng(seed)
  return [[101] + list(rng.integers(1000, 2000, rng.integers(1, 12))) + [102] for _ in range(n)]


def _batcher(ids, **kwargs):
  settings = dict(global_batch=4, seed=3, pad_id=PAD, max_length=16, pad_to_multiple_of=8)
  settings.update(kwargs)
  return sentence_batches.SentenceBatcher(ids, **settings)


def test_each_epoch_visits_every_kept_sentence_once_in_a_new_order():
  ids = _sentences()
  batcher = _batcher(ids)
  assert batcher.steps_per_epoch == 5  # 23 // 4: the remainder is dropped
  epochs = [np.concatenate([batcher.global_rows(e * 5 + b) for b in range(5)]) for e in (0, 1)]
  for rows in epochs:
    assert len(set(rows.tolist())) == 20
  assert not np.array_equal(epochs[0], epochs[1])


def test_rows_are_the_sentences_padded_to_a_multiple():
  ids = _sentences()
  batcher = _batcher(ids)
  batch = batcher.batch(7)
  width = batch["input_ids"].shape[1]
  longest = max(len(ids[r]) for r in batch["example_index"])
  assert width % 8 == 0 and longest <= width < longest + 8
  for row, index in enumerate(batch["example_index"]):
    n = len(ids[index])
    assert batch["input_ids"][row, :n].tolist() == ids[index]
    assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
    assert (batch["input_ids"][row, n:] == PAD).all()


def test_processes_split_the_global_batch_at_one_width():
  ids = _sentences()
  whole = _batcher(ids).batch(3)
  parts = [_batcher(ids, process_index=p, process_count=2).batch(3) for p in (0, 1)]
  assert all(p["input_ids"].shape == (2, whole["input_ids"].shape[1]) for p in parts)
  for key in ("input_ids", "attention_mask", "example_index"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_iterate_and_resume_give_the_batches_of_their_steps():
  batcher = _batcher(_sentences())
  got = dict(batcher.iterate(4, 8))
  assert sorted(got) == [4, 5, 6, 7]
  for step, batch in got.items():
    np.testing.assert_array_equal(batch["input_ids"], batcher.batch(step)["input_ids"])
  batcher.check_position(batcher.position(6))
  with pytest.raises(ValueError, match="batch size or the data"):
    _batcher(_sentences(), global_batch=2).check_position(batcher.position(6))


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match="more than max_length"):
    _batcher([[1] * 20])
  with pytest.raises(ValueError, match="divide over 3 processes"):
    _batcher(_sentences(), process_count=3)
  with pytest.raises(ValueError, match="train.batch_size"):
    _batcher(_sentences(3))
