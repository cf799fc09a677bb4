"""data/retromae_batches.py: full blocks, each visited once an epoch, masked by example."""

import numpy as np
import pytest

from retrieval_jax.data import masking
from retrieval_jax.data.retromae_batches import BlockMaskBatcher, continuation_table

CLS, SEP, MASK, VOCAB = 101, 102, 103, 1000


def _stream(n, start=1000):
  return np.arange(start, start + n, dtype=np.int32) % 900 + 100 + 3  # ids 103.. avoid specials


def _batcher(streams=None, **kwargs):
  continuation = np.zeros(VOCAB + 100, bool)
  continuation[::3] = True  # every third id is a `##` piece
  args = dict(cls_id=CLS, sep_id=SEP, mask_id=MASK, vocab_size=VOCAB, continuation=continuation,
              block_length=18, settings=masking.MaskingSettings(), global_batch=4, seed=0)
  args.update(kwargs)
  streams = streams if streams is not None else [_stream(16 * 10), _stream(16 * 7 + 5, 7)]
  return BlockMaskBatcher(streams, **args)


def test_continuation_table_of_wordpiece(minilm_dir):
  from retrieval_jax.data import tokenize as tok  # pylint: disable=g-import-not-at-top
  tokenizer = tok.load_tokenizer(minilm_dir)
  table = continuation_table(tokenizer)
  vocab = tokenizer.get_vocab()
  assert table[vocab["##ing"]] and not table[vocab["the"]] and not table[vocab["[CLS]"]]


def test_every_block_is_full_and_visited_once_an_epoch():
  batcher = _batcher()
  assert batcher.blocks.tolist() == [10, 7] and batcher.steps_per_epoch == 4
  seen = []
  for step in range(batcher.steps_per_epoch):
    batch = batcher.batch(step)
    ids = batch["decoder_input_ids"]
    assert ids.shape == (4, 18) and (ids[:, 0] == CLS).all() and (ids[:, -1] == SEP).all()
    seen.extend(tuple(row) for row in ids)
  assert len(set(seen)) == 16  # 16 of the 17 blocks: the last partial batch is dropped
  every = {tuple(batcher.block(e)) for e in range(17 * 3)}  # three epochs' worth of indices
  assert len(every) == 17


def test_masks_follow_the_settings():
  batch = _batcher().batch(1)
  labels, inputs, ids = batch["encoder_labels"], batch["encoder_input_ids"], batch["decoder_input_ids"]
  masked = labels != masking.IGNORE
  assert (labels[masked] == ids[masked]).all() and (inputs[~masked] == ids[~masked]).all()
  assert not masked[:, [0, -1]].any()
  assert (masked.sum(axis=1) <= round(18 * 0.3)).all()
  visible = batch["decoder_visibility"]
  assert visible.shape == (4, 18, 18) and visible.dtype == bool
  assert not visible[:, np.arange(18), np.arange(18)].any() and visible[:, 1:, 0].all()
  assert (batch["decoder_labels"][:, 1:-1] == ids[:, 1:-1]).all()
  assert (batch["decoder_labels"][:, [0, -1]] == masking.IGNORE).all()


def test_a_batch_is_its_step_and_processes_split_it():
  whole = _batcher().batch(2)
  again = _batcher().batch(2)
  halves = [_batcher(process_index=i, process_count=2).batch(2) for i in range(2)]
  for key, value in whole.items():
    np.testing.assert_array_equal(value, again[key])
    np.testing.assert_array_equal(value, np.concatenate([h[key] for h in halves]))
  assert [s for s, _ in _batcher().iterate(1, 4)] == [1, 2, 3]


def test_position_round_trip_and_mismatch():
  batcher = _batcher()
  batcher.check_position(batcher.position(6))
  with pytest.raises(ValueError, match="data position mismatch.*did the batch size, the data"):
    _batcher(streams=[_stream(16 * 12)]).check_position(batcher.position(6))


@pytest.mark.parametrize("kwargs, message", [
    ({"block_length": 2}, "data.max_length"),
    ({"global_batch": 40}, "exceeds the 17 blocks"),
    ({"global_batch": 3, "process_count": 2}, "train.batch_size"),
])
def test_invalid_batchers_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _batcher(**kwargs)
