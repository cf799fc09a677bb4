"""data/cropping.py: Contriever's chunks and crops (numpy only)."""

import numpy as np
import pytest

from retrieval_jax.data import cropping, text_sources
from retrieval_jax.data.cropping import CropPairBatcher, CropSettings

CLS, SEP, PAD = 101, 102, 0


def _stream(n, seed=0):
  # Distinct ids (no repeats) so a crop's place in the stream can be read back.
  return np.arange(1000, 1000 + n, dtype=np.int32)


def _batcher(streams=None, **kwargs):
  settings = kwargs.pop("settings", CropSettings(chunk_length=64))
  return CropPairBatcher(streams or [_stream(64 * 40)], cls_id=CLS, sep_id=SEP, pad_id=PAD,
                         settings=settings, global_batch=kwargs.pop("global_batch", 8),
                         seed=kwargs.pop("seed", 3), **kwargs)


def test_crops_lie_inside_the_ratio_bounds_and_the_chunk():
  settings = CropSettings(chunk_length=256, ratio_min=0.1, ratio_max=0.5, deletion=0.0)
  rng = np.random.default_rng(0)
  crops = [cropping.draw_crop(rng, 256, settings) for _ in range(4000)]
  lengths = np.asarray([c.length for c in crops])
  assert lengths.min() >= int(256 * 0.1) and lengths.max() <= int(256 * 0.5)
  assert lengths.min() <= 28 and lengths.max() >= 126  # the whole range is drawn
  assert all(0 <= c.start and c.start + c.length <= 256 for c in crops)
  assert all(c.keep.all() for c in crops)  # no deletion asked


def test_query_and_key_crops_are_independent():
  batcher = _batcher(settings=CropSettings(chunk_length=256, deletion=0.0),
                     streams=[_stream(256 * 60)])
  draws = [batcher.draw(e) for e in range(3000)]
  q_start = np.asarray([d.query.start for d in draws], np.float64)
  k_start = np.asarray([d.key.start for d in draws], np.float64)
  q_len = np.asarray([d.query.length for d in draws], np.float64)
  k_len = np.asarray([d.key.length for d in draws], np.float64)
  for a, b in ((q_start, k_start), (q_len, k_len)):
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.06  # 3000 draws: |r| of independent ~ 0.018
  assert np.mean((q_start == k_start) & (q_len == k_len)) < 0.01


def test_deletion_rate():
  settings = CropSettings(chunk_length=256, deletion=0.1)
  rng = np.random.default_rng(1)
  crops = [cropping.draw_crop(rng, 256, settings) for _ in range(2000)]
  total = sum(c.length for c in crops)
  dropped = total - sum(c.kept for c in crops)
  sigma = np.sqrt(total * 0.1 * 0.9)
  assert abs(dropped - 0.1 * total) < 5 * sigma, (dropped, total)


def test_a_batch_is_cls_crop_sep_of_its_chunk():
  batcher = _batcher()
  batch = batcher.batch(5)
  assert set(batch) == {"query_input_ids", "query_attention_mask", "passage_input_ids",
                        "passage_attention_mask", "example_index"}
  width = batch["query_input_ids"].shape[1]
  assert width % 16 == 0 and width <= batcher.settings.max_crop + 2
  for row, example in enumerate(batch["example_index"]):
    query, key = batcher.pair(int(example))
    for side, ids in (("query", query), ("passage", key)):
      n = int(batch[f"{side}_attention_mask"][row].sum())
      assert batch[f"{side}_input_ids"][row, :n].tolist() == ids
      assert (batch[f"{side}_input_ids"][row, n:] == PAD).all()
      assert ids[0] == CLS and ids[-1] == SEP
    draw = batcher.draw(int(example))
    chunk = batcher.chunk(int(example), draw)
    assert len(chunk) == 64
    # The crop's tokens, in order, are inside its chunk (ids are distinct in the stream).
    inner = np.asarray(query[1:-1])
    assert np.isin(inner, chunk).all() and (np.diff(inner) > 0).all()


def test_processes_split_the_global_batch_and_resume_yields_the_same_batches():
  one = _batcher(global_batch=8)
  halves = [_batcher(global_batch=8, process_index=p, process_count=2) for p in (0, 1)]
  for step in (0, 7, one.steps_per_epoch + 1):
    whole = one.batch(step)
    parts = [h.batch(step) for h in halves]
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  again = _batcher(global_batch=8)
  resumed = dict(again.iterate(3, 6))
  for step in range(3, 6):
    for key, value in one.batch(step).items():
      np.testing.assert_array_equal(resumed[step][key], value)


def test_the_offset_is_redrawn_each_epoch():
  offsets = {cropping.epoch_offset(3, epoch, 0, 64) for epoch in range(20)}
  assert len(offsets) > 5 and all(0 <= o < 64 for o in offsets)
  batcher = _batcher()
  example = batcher.steps_per_epoch * batcher.global_batch  # epoch 1's first example
  draw = batcher.draw(example)
  offset = cropping.epoch_offset(3, 1, draw.source, 64)
  start = offset + draw.chunk * 64
  np.testing.assert_array_equal(batcher.chunk(example, draw),
                                batcher.streams[0][start:start + 64])


@pytest.mark.parametrize("coefficient, expected", [(0.0, 0.5), (1.0, 1 / 3)])
def test_sources_are_drawn_by_their_size_to_the_coefficient(coefficient, expected):
  settings = CropSettings(chunk_length=64, sampling_coefficient=coefficient)
  batcher = _batcher(streams=[_stream(64 * 20), _stream(64 * 40)], settings=settings)
  sources = np.asarray([batcher.draw(e).source for e in range(4000)])
  assert abs(np.mean(sources == 0) - expected) < 0.03


def test_permutation_visits_each_chunk_once_per_epoch():
  settings = CropSettings(chunk_length=64, sample="permutation")
  batcher = _batcher(settings=settings)
  per_epoch = batcher.steps_per_epoch * batcher.global_batch
  chunks = [batcher.draw(e).chunk for e in range(per_epoch)]
  assert len(set(chunks)) == per_epoch
  second = [batcher.draw(per_epoch + e).chunk for e in range(per_epoch)]
  assert second != chunks


def test_position_round_trip_and_mismatch():
  batcher = _batcher()
  position = batcher.position(13)
  batcher.check_position(position)
  with pytest.raises(ValueError, match="mismatch in 'epoch'.*train.batch_size 16"):
    _batcher(global_batch=16).check_position(position)


@pytest.mark.parametrize("kwargs, key", [
    ({"ratio_min": 0.6, "ratio_max": 0.5}, "ratio_min"),
    ({"deletion": 1.0}, "data.crop.deletion"),
    ({"chunk_length": 1}, "data.crop.chunk_length"),
    ({"sample": "stratified"}, "data.crop.sample"),
    ({"chunk_length": 8, "ratio_min": 0.05}, "empty crop"),
])
def test_invalid_settings_name_their_key(kwargs, key):
  with pytest.raises(ValueError, match=key):
    CropSettings(**kwargs)


def test_invalid_batchers_are_refused():
  with pytest.raises(ValueError, match="fewer than two chunks"):
    _batcher(streams=[_stream(64)])
  with pytest.raises(ValueError, match="train.batch_size"):
    _batcher(global_batch=1000)
  with pytest.raises(ValueError, match="permutation.*one source"):
    _batcher(streams=[_stream(640), _stream(640)],
             settings=CropSettings(chunk_length=64, sample="permutation"))


def test_token_stream_concatenates_texts_without_special_tokens(minilm_dir):
  from retrieval_jax.data import tokenize as tok  # pylint: disable=g-import-not-at-top
  tokenizer = tok.load_tokenizer(minilm_dir)
  texts = ["Hello world.", "", "A second [SEP] text."]
  stream = text_sources.token_stream(tokenizer, texts, batch_size=2)
  expected = [i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]]
  assert stream.dtype == np.int32 and stream.tolist() == expected
