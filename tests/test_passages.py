"""Tests for retrieval_jax.data.passages with the packaged all-MiniLM-L6-v2 tokenizer."""

import numpy as np
import pytest

from retrieval_jax.data import passages
from retrieval_jax.data import tokenize as tok


def _texts():
  """Empty, blank, short, exactly-one-chunk-ish, long, and non-ASCII documents."""
  rng = np.random.default_rng(0)
  words = ("dense retrieval splits long documents into passages and scores each document by "
           "its best passage while firstp keeps only the beginning").split()
  texts = [" ".join(rng.choice(words, n)) for n in (1, 5, 13, 14, 15, 40, 120, 700)]
  texts += ["", "   ", "Café naïve façade — 東京 and Zürich, résumé!", "x" * 300]
  order = rng.permutation(len(texts))
  return [texts[i] for i in order]


_TEXTS = _texts()


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
  return tok.load_tokenizer(minilm_dir)


@pytest.mark.parametrize("max_length", [3, 16, 64, 512])
def test_one_passage_is_truncation(tokenizer, max_length):
  """FirstP: max_passages=1 gives exactly what tokenize() gives."""
  token_ids, doc_of = passages.split_documents(tokenizer, _TEXTS, max_length, 1)
  assert token_ids == tok.tokenize(tokenizer, _TEXTS, max_length)
  np.testing.assert_array_equal(doc_of, np.arange(len(_TEXTS)))
  assert doc_of.dtype == np.int64


def test_special_tokens_of_bert(tokenizer):
  assert passages.special_tokens(tokenizer) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id])


@pytest.mark.parametrize("max_length,max_passages", [(16, 4), (16, 100), (7, 3), (512, 4)])
def test_passages_are_consecutive_chunks(tokenizer, max_length, max_passages):
  token_ids, doc_of = passages.split_documents(tokenizer, _TEXTS, max_length, max_passages)
  content = tokenizer(_TEXTS, add_special_tokens=False, verbose=False)["input_ids"]
  chunk = max_length - 2
  assert len(token_ids) == len(doc_of)
  assert np.all(np.diff(doc_of) >= 0)
  counts = passages.passage_counts(doc_of, len(_TEXTS))
  for row, ids in enumerate(content):
    expected = min(max(1, -(-len(ids) // chunk)), max_passages)
    assert counts[row] == expected, row
    mine = [token_ids[i] for i in np.flatnonzero(doc_of == row)]
    for passage in mine:
      assert 3 <= len(passage) <= max_length or (not ids and len(passage) == 2)
      assert passage[0] == tokenizer.cls_token_id and passage[-1] == tokenizer.sep_token_id
    # All passages but the last are full, and together they are the kept prefix of the text.
    assert all(len(p) == max_length for p in mine[:-1])
    joined = [t for p in mine for t in p[1:-1]]
    assert joined == ids[:chunk * max_passages]


def test_long_document_is_cut_at_max_passages(tokenizer):
  text = " ".join(["word"] * 100)
  token_ids, doc_of = passages.split_documents(tokenizer, ["short", text, ""], 12, 4)
  np.testing.assert_array_equal(doc_of, [0, 1, 1, 1, 1, 2])
  assert [len(ids) for ids in token_ids] == [3, 12, 12, 12, 12, 2]
  np.testing.assert_array_equal(passages.passage_counts(doc_of, 3), [1, 4, 1])


def test_empty_input(tokenizer):
  token_ids, doc_of = passages.split_documents(tokenizer, [], 16, 4)
  assert token_ids == [] and doc_of.shape == (0,) and doc_of.dtype == np.int64
  np.testing.assert_array_equal(passages.passage_counts(doc_of, 2), [0, 0])


def test_bad_arguments(tokenizer):
  with pytest.raises(ValueError, match="max_length"):
    passages.split_documents(tokenizer, ["a"], 2, 4)
  with pytest.raises(ValueError, match="max_passages"):
    passages.split_documents(tokenizer, ["a"], 16, 0)
  with pytest.raises(TypeError, match="item 1"):
    passages.split_documents(tokenizer, ["a", None], 16, 2)
  with pytest.raises(ValueError, match="doc_of"):
    passages.passage_counts(np.array([0, 3]), 3)
  with pytest.raises(ValueError, match="1-D"):
    passages.passage_counts(np.zeros((2, 2), np.int64), 3)
