"""Tests for retrieval_jax.data.tokenize: truncation, input checks and length-bucketed batches.

The bucketing checks are properties computed independently of the implementation (every index
once, filler rows, bucket widths, longest-first order, masks), over several random corpora.
"""

import numpy as np
import pytest
import transformers

from retrieval_jax.data import tokenize as tok


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
  return tok.load_tokenizer(minilm_dir)


# --- load_tokenizer / tokenize ------------------------------------------------------------------


def test_load_tokenizer_is_fast_and_matches_transformers(tokenizer, minilm_dir):
  reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
  assert tokenizer.is_fast
  text = "Dense retrieval with JAX, on 8 fake CPU devices."
  assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]


def test_load_tokenizer_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError):
    tok.load_tokenizer(tmp_path / "does-not-exist")


def test_tokenize_short_texts_are_unchanged(tokenizer):
  texts = ["hello world", "a", "Dense passage retrieval."]
  ids = tok.tokenize(tokenizer, texts, max_length=64)
  assert ids == [tokenizer(t)["input_ids"] for t in texts]
  for row in ids:
    assert row[0] == tokenizer.cls_token_id and row[-1] == tokenizer.sep_token_id
    assert tokenizer.pad_token_id not in row


@pytest.mark.parametrize("max_length", [2, 5, 16, 256])
def test_tokenize_truncates_at_max_length(tokenizer, max_length):
  long_text = " ".join(f"word{i}" for i in range(400))
  full = tokenizer(long_text)["input_ids"]
  assert len(full) > 256
  (ids,) = tok.tokenize(tokenizer, [long_text], max_length=max_length)
  assert len(ids) == max_length
  # Truncation keeps the head of the text and the special tokens at both ends.
  assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
  assert ids[1:-1] == full[1:max_length - 1]


@pytest.mark.parametrize("bad", [None, b"bytes", 3, ["a", "list"]])
def test_tokenize_rejects_non_strings(tokenizer, bad):
  with pytest.raises(TypeError, match="item 1"):
    tok.tokenize(tokenizer, ["fine", bad], max_length=16)


def test_tokenize_rejects_too_small_max_length(tokenizer):
  with pytest.raises(ValueError, match="max_length"):
    tok.tokenize(tokenizer, ["text"], max_length=1)


# --- padded_length / length_bucketed_batches ------------------------------------------------------


def _expected_width(longest: int, multiple: int, max_length: int) -> int:
  """Smallest multiple of `multiple` holding `longest` (at least 1 token), capped at max_length."""
  width = multiple
  while width < max(longest, 1):
    width += multiple
  return min(width, max_length)


@pytest.mark.parametrize("length,multiple,max_length,expected", [
    (1, 16, 256, 16), (16, 16, 256, 16), (17, 16, 256, 32), (250, 16, 256, 256),
    (256, 16, 256, 256), (19, 16, 20, 20), (7, 1, 256, 7), (9, 8, 12, 12)])
def test_padded_length(length, multiple, max_length, expected):
  assert tok.padded_length(length, multiple, max_length) == expected


def _random_corpus(num, max_length, seed, min_length=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_length, max_length + 1, size=num)
  # Token ids start at 5 so that they never equal the padding id used below.
  return [list(rng.integers(5, 1000, size=n)) for n in lengths]


@pytest.mark.parametrize("num,batch_size,multiple,max_length,fill_last", [
    (37, 8, 16, 64, True),    # Last batch partial: 5 filler rows.
    (64, 16, 16, 64, True),   # Divides evenly: no filler.
    (23, 5, 8, 20, True),     # max_length not a multiple of the bucket: capped at 20.
    (10, 32, 4, 30, True),    # Fewer texts than one batch.
    (41, 8, 16, 48, False),   # fill_last off: the last batch is short.
    (50, 7, 1, 25, True),     # multiple of 1: exact lengths.
])
def test_length_bucketed_batches_properties(num, batch_size, multiple, max_length, fill_last):
  pad_id = 3
  corpus = _random_corpus(num, max_length, seed=num + batch_size)
  corpus[0] = []  # A zero-length sequence must still get a row (all padding, zero mask).
  lengths = np.array([len(ids) for ids in corpus])
  batches = list(tok.length_bucketed_batches(corpus, batch_size, pad_id, max_length,
                                             pad_to_multiple_of=multiple, fill_last=fill_last))
  assert len(batches) == -(-num // batch_size)

  seen = []
  previous_min = None
  for b, batch in enumerate(batches):
    rows, width = batch.input_ids.shape
    assert batch.input_ids.dtype == np.int32 and batch.attention_mask.dtype == np.int32
    assert batch.attention_mask.shape == (rows, width) and batch.indices.shape == (rows,)
    is_last = b == len(batches) - 1
    if fill_last or not is_last:
      assert rows == batch_size
    else:
      assert rows == num - batch_size * (len(batches) - 1)
    real = batch.indices[batch.indices >= 0]
    assert batch.num_real == len(real)
    # Filler rows only at the end, with index -1, zero mask and padding ids.
    assert np.all(batch.indices[:len(real)] >= 0) and np.all(batch.indices[len(real):] == -1)
    assert np.all(batch.attention_mask[len(real):] == 0)
    assert np.all(batch.input_ids[len(real):] == pad_id)
    # Bucket width: a multiple of `multiple` (or max_length), just big enough for the longest.
    assert width == _expected_width(int(lengths[real].max()), multiple, max_length)
    assert width % multiple == 0 or width == max_length
    # Longest first: every sequence of this batch is at least as long as any later one.
    if previous_min is not None:
      assert lengths[real].max() <= previous_min
    previous_min = lengths[real].min()
    # Mask = prefix of ones of the sequence's length; ids are the sequence then padding.
    for r, i in enumerate(real):
      n = lengths[i]
      np.testing.assert_array_equal(batch.attention_mask[r],
                                    (np.arange(width) < n).astype(np.int32))
      np.testing.assert_array_equal(batch.input_ids[r, :n], corpus[i])
      assert np.all(batch.input_ids[r, n:] == pad_id)
    seen.extend(real.tolist())
  assert sorted(seen) == list(range(num))  # Every index exactly once.


def test_length_bucketed_batches_equal_lengths_keep_input_order():
  corpus = [[7] * n for n in (3, 5, 3, 5, 3, 1)]
  batches = list(tok.length_bucketed_batches(corpus, 2, 0, 8, pad_to_multiple_of=4))
  order = np.concatenate([b.indices[b.indices >= 0] for b in batches]).tolist()
  assert order == [1, 3, 0, 2, 4, 5]


def test_length_bucketed_batches_empty_input():
  assert not list(tok.length_bucketed_batches([], 4, 0, 16))


def test_length_bucketed_batches_rejects_too_long_sequences():
  with pytest.raises(ValueError, match="max_length"):
    list(tok.length_bucketed_batches([[1] * 5, [1] * 17], 4, 0, 16))


@pytest.mark.parametrize("batch_size", [0, -1])
def test_length_bucketed_batches_rejects_bad_batch_size(batch_size):
  with pytest.raises(ValueError, match="batch_size"):
    list(tok.length_bucketed_batches([[1, 2]], batch_size, 0, 16))


def test_real_tokenizer_round_trip(tokenizer):
  """Tokenise then bucket real text: the unpadded ids come back, with the tokenizer's pad id."""
  texts = ["short", "a somewhat longer sentence for the second bucket " * 3, "mid length text here"]
  ids = tok.tokenize(tokenizer, texts, max_length=32)
  batches = list(tok.length_bucketed_batches(ids, 2, tokenizer.pad_token_id, 32,
                                             pad_to_multiple_of=8))
  recovered = {}
  for batch in batches:
    for r, i in enumerate(batch.indices):
      if i >= 0:
        recovered[int(i)] = batch.input_ids[r][batch.attention_mask[r] > 0].tolist()
  assert recovered == dict(enumerate(ids))


def test_tokenize_empty_list(tokenizer):
  assert tok.tokenize(tokenizer, [], max_length=16) == []
