"""Tests for retrieval_jax.data.pairs: DPR-style examples, epoch order, process slices, resume.

Batches are checked against direct tokenisation of the texts the batch should hold, computed here
from the dataset and the RNG streams the module documents, not from its internals.
"""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from retrieval_jax.data import pairs
from retrieval_jax.data import tokenize as tok
from retrieval_jax.data.beir import BeirData, load_beir
from tests.helpers import write_tiny_beir

_WORDS = ("apple river mountain doctor engine garden window silver market winter forest ocean "
          "planet music school castle bridge rabbit candle island letter machine orange").split()
NUM_DOCS = 50
NUM_QUERIES = 30  # One has only a relevance-0 judgement: 29 examples.


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
  return tok.load_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def data() -> BeirData:
  """Documents of 2 to 150 words (some beyond the passage cap), queries with 1-3 positives."""
  rng = np.random.default_rng(0)
  corpus_ids = [f"d{i}" for i in range(NUM_DOCS)]
  docs = [" ".join(rng.choice(_WORDS, rng.integers(2, 40))) for _ in range(NUM_DOCS)]
  docs[7] = " ".join(rng.choice(_WORDS, 150))
  query_ids = [f"q{i}" for i in range(NUM_QUERIES)]
  texts = [" ".join(rng.choice(_WORDS, rng.integers(1, 12))) for _ in query_ids]
  qrels = {}
  for query_id in query_ids:
    rows = rng.choice(NUM_DOCS, rng.integers(2, 5), replace=False)
    qrels[query_id] = {corpus_ids[r]: 1 + int(r % 2) for r in rows[1:]}
    qrels[query_id][corpus_ids[rows[0]]] = 0
  qrels["q5"] = {"d3": 0}  # Judged, but nothing relevant: dropped.
  return BeirData("synthetic", corpus_ids, [""] * NUM_DOCS, docs, query_ids, texts, qrels)


@pytest.fixture(scope="module")
def dataset(data) -> pairs.PairDataset:
  return pairs.pairs_from_beir(data)


class Negatives:
  """A deterministic negatives_fn with one spare column, recording its calls."""

  def __init__(self, num_queries: int, width: int):
    self.num_queries, self.width, self.calls = num_queries, width, []

  def table(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([99, epoch]).integers(0, NUM_DOCS, (self.num_queries, self.width))

  def __call__(self, epoch: int) -> np.ndarray:
    self.calls.append(epoch)
    return self.table(epoch)


def _batcher(dataset, tokenizer, *, global_batch=8, num_negatives=2, negatives=None, **kwargs):
  if negatives is None and num_negatives:
    negatives = Negatives(len(dataset.query_ids), num_negatives + 1)
  defaults = {"query_max_length": 32, "passage_max_length": 48, "seed": 3}
  return pairs.PairBatcher(dataset, tokenizer, global_batch=global_batch,
                           num_negatives=num_negatives, negatives_fn=negatives,
                           **{**defaults, **kwargs})


def _assert_batches_equal(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --- pairs_from_beir ------------------------------------------------------------------------------


def test_pairs_from_tiny_beir(tmp_path):
  data = load_beir(write_tiny_beir(tmp_path / "tiny"), "test", use_tfds=False)
  dataset = pairs.pairs_from_beir(data)
  assert dataset.query_ids == ["q1", "q2", "q3", "q4"]
  assert dataset.query_texts == data.query_texts
  # q4 judges d6 relevant and d5 (row 4) with 0: only d6 (row 5) is a positive.
  assert [p.tolist() for p in dataset.positives] == [[0], [1], [3], [5]]
  assert all(p.dtype == np.int64 for p in dataset.positives)
  assert dataset.doc_texts == data.doc_strings()
  np.testing.assert_array_equal(dataset.query_rows, [0, 1, 2, 3])
  assert dataset.query_rows.dtype == np.int64


def test_pairs_from_beir_drops_queries_without_positive(data, caplog):
  with caplog.at_level(logging.INFO):
    dataset = pairs.pairs_from_beir(data)
  assert "dropped 1 of 30" in caplog.text
  assert dataset.query_ids == [q for q in data.query_ids if q != "q5"]
  assert dataset.query_rows.tolist() == [i for i in range(NUM_QUERIES) if i != 5]
  for query_id, text, rows, row in zip(dataset.query_ids, dataset.query_texts, dataset.positives,
                                       dataset.query_rows):
    assert data.query_ids[row] == query_id and data.query_texts[row] == text
    expected = sorted(int(d[1:]) for d, rel in data.qrels[query_id].items() if rel > 0)
    assert rows.tolist() == expected


def test_pairs_positives_are_the_data_positive_rows_of_kept_queries(data):
  # Duplicated doc ids give every row, as in mining: both use `BeirData.positive_rows`.
  dup = BeirData("dup", ["d0", "d1", "d0"], [""] * 3, ["a", "b", "c"], ["q0", "q1"], ["x", "y"],
                 {"q0": {"d0": 1}, "q1": {"d1": 0}})
  assert [p.tolist() for p in pairs.pairs_from_beir(dup).positives] == [[0, 2]]
  dataset = pairs.pairs_from_beir(data)
  rows = data.positive_rows()
  assert [p.tolist() for p in dataset.positives] == [rows[q].tolist() for q in dataset.query_rows]


def test_pairs_from_beir_without_any_positive():
  data = BeirData("allzero", ["d0", "d1"], ["", ""], ["a", "b"], ["q0"], ["x"], {"q0": {"d0": 0}})
  with pytest.raises(ValueError, match="'allzero'.*no query has a positive judgement"):
    pairs.pairs_from_beir(data)


# --- epochs and steps -----------------------------------------------------------------------------


def test_steps_per_epoch_drops_the_remainder():
  assert pairs.steps_per_epoch(29, 8) == 3
  assert pairs.steps_per_epoch(32, 8) == 4
  assert pairs.steps_per_epoch(5, 5) == 1
  for bad in (0, -1, 30):
    with pytest.raises(ValueError, match="train.batch_size"):
      pairs.steps_per_epoch(29, bad)


def test_epoch_order_is_a_seeded_permutation_per_epoch():
  orders = [pairs.epoch_order(100, seed=1, epoch=e) for e in range(3)]
  for order in orders:
    assert sorted(order.tolist()) == list(range(100))
  assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
  np.testing.assert_array_equal(orders[1], pairs.epoch_order(100, seed=1, epoch=1))
  assert not np.array_equal(orders[1], pairs.epoch_order(100, seed=2, epoch=1))
  # Its own stream: [seed, epoch, 2]. Not [seed, epoch, 0], which SeedSequence's zero padding
  # makes the negatives' default_rng([seed, epoch]); nor the positives' [seed, epoch, 1].
  np.testing.assert_array_equal(orders[2], np.random.default_rng([1, 2, 2]).permutation(100))
  assert np.array_equal(np.random.default_rng([1, 2, 0]).permutation(100),
                        np.random.default_rng([1, 2]).permutation(100))
  for other in ([1, 2], [1, 2, 1]):
    assert not np.array_equal(orders[2], np.random.default_rng(other).permutation(100))
  with pytest.raises(ValueError, match="seed"):
    pairs.epoch_order(10, seed=-1, epoch=0)


def test_step_position():
  assert [pairs.step_position(s, 3) for s in range(7)] == [
      (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
  with pytest.raises(ValueError):
    pairs.step_position(-1, 3)


def test_every_example_once_per_epoch(dataset, tokenizer):
  batcher = _batcher(dataset, tokenizer)
  assert batcher.steps_per_epoch == 3
  seen = []
  for epoch in range(2):
    steps = range(epoch * 3, epoch * 3 + 3)
    seen.append(np.concatenate([batcher.batch(s)["example_index"] for s in steps]))
    assert len(set(seen[-1].tolist())) == 24
    order = pairs.epoch_order(len(dataset.query_ids), seed=3, epoch=epoch)
    np.testing.assert_array_equal(seen[-1], order[:24])
  assert not np.array_equal(seen[0], seen[1])


# --- batch contents -------------------------------------------------------------------------------


def _expected_positive(dataset, seed, epoch, example):
  counts = np.array([len(p) for p in dataset.positives])
  choice = np.random.default_rng([seed, epoch, 1]).integers(0, counts)
  return int(dataset.positives[example][choice[example]])


def _unpadded(ids, mask):
  assert set(np.unique(mask)) <= {0, 1}
  length = int(mask.sum())
  assert mask[:length].all()  # Left-aligned: real tokens, then padding.
  assert (ids[length:] == 0).all()  # MiniLM's pad id.
  return ids[:length].tolist()


@pytest.mark.parametrize("step", [0, 4])
def test_slots_hold_query_positive_and_negatives(dataset, tokenizer, step):
  negatives = Negatives(len(dataset.query_ids), 3)
  batcher = _batcher(dataset, tokenizer, negatives=negatives)
  batch = batcher.batch(step)
  epoch = step // 3
  table = negatives.table(epoch)
  assert batch["query_input_ids"].dtype == np.int32 and batch["passage_input_ids"].dtype == np.int32
  assert batch["passage_input_ids"].shape[:2] == (8, 3)
  for r, example in enumerate(batch["example_index"]):
    (query,) = tok.tokenize(tokenizer, [dataset.query_texts[example]], 32)
    assert _unpadded(batch["query_input_ids"][r], batch["query_attention_mask"][r]) == query
    rows = [_expected_positive(dataset, 3, epoch, example), *table[example, :2]]
    expected = tok.tokenize(tokenizer, [dataset.doc_texts[d] for d in rows], 48)
    got = [_unpadded(batch["passage_input_ids"][r, s], batch["passage_attention_mask"][r, s])
           for s in range(3)]
    assert got == expected
  # Padded to the longest of the batch, rounded to 32, capped at the max length.
  lengths = batch["passage_attention_mask"].sum(-1)
  assert batch["passage_input_ids"].shape[2] == tok.padded_length(lengths.max(), 32, 48)
  lq = tok.padded_length(batch["query_attention_mask"].sum(-1).max(), 32, 32)
  assert batch["query_input_ids"].shape[1] == lq


def test_long_passages_are_capped(dataset, tokenizer):
  # d7 has 150 words; make it every negative of every query.
  table = np.full((len(dataset.query_ids), 1), 7)
  batch = _batcher(dataset, tokenizer, num_negatives=1, negatives=lambda e: table).batch(0)
  assert batch["passage_input_ids"].shape[2] == 48  # Not a multiple of 32: the cap wins.
  assert (batch["passage_attention_mask"][:, 1].sum(-1) == 48).all()


def test_positive_draw_varies_by_epoch_not_by_batching(dataset, tokenizer):
  multi = [i for i, p in enumerate(dataset.positives) if len(p) > 1]
  assert multi
  chosen = {i: set() for i in multi}
  for epoch in range(8):
    for i in multi:
      chosen[i].add(_expected_positive(dataset, 3, epoch, i))
  assert any(len(c) > 1 for c in chosen.values())
  # The positive of an example in an epoch is the same for batch sizes 4 and 8.
  small = _batcher(dataset, tokenizer, global_batch=4, num_negatives=0)
  large = _batcher(dataset, tokenizer, global_batch=8, num_negatives=0)
  first = {}
  for step in range(small.steps_per_epoch):
    b = small.batch(step)
    for example, ids in zip(b["example_index"], b["passage_input_ids"][:, 0]):
      first[int(example)] = _unpadded(ids, ids != 0)
  b = large.batch(0)
  for example, ids in zip(b["example_index"], b["passage_input_ids"][:, 0]):
    if int(example) in first:
      assert _unpadded(ids, ids != 0) == first[int(example)]


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(dataset, tokenizer, process_count):
  whole = _batcher(dataset, tokenizer)
  parts = [_batcher(dataset, tokenizer, process_index=p, process_count=process_count)
           for p in range(process_count)]
  for step in (0, 2, 5):
    expected = whole.batch(step)
    slices = [part.batch(step) for part in parts]
    for s in slices:
      local = 8 // process_count
      assert s["query_input_ids"].shape == (local, expected["query_input_ids"].shape[1])
      assert s["passage_input_ids"].shape[1:] == expected["passage_input_ids"].shape[1:]
    joined = {key: np.concatenate([np.atleast_1d(s[key]) for s in slices]) for key in expected}
    joined["negatives_version"] = slices[0]["negatives_version"]
    assert all(s["negatives_version"] == 0 for s in slices)
    _assert_batches_equal(joined, expected)


def test_no_negatives(dataset, tokenizer):
  batcher = _batcher(dataset, tokenizer, num_negatives=0, negatives=None, process_count=2)
  batch = batcher.batch(1)
  assert batch["passage_input_ids"].shape[:2] == (4, 1)
  assert batch["passage_attention_mask"].shape == batch["passage_input_ids"].shape
  assert batch["example_index"].dtype == np.int64


# --- negatives_fn ---------------------------------------------------------------------------------


def test_negatives_fn_called_once_per_epoch(dataset, tokenizer):
  negatives = Negatives(len(dataset.query_ids), 3)
  batcher = _batcher(dataset, tokenizer, negatives=negatives)
  steps = [step for step, _ in batcher.iterate(0, 9)]
  assert steps == list(range(9))
  assert negatives.calls == [0, 1, 2]


@pytest.mark.parametrize("table, message", [
    (np.zeros((29, 1), np.int64), r"shape \(29, 1\)"),
    (np.zeros((28, 2), np.int64), r"shape \(28, 2\)"),
    (np.full((29, 2), -1), "outside the corpus"),
    (np.full((29, 2), NUM_DOCS), "outside the corpus"),
    (np.zeros((29, 2), np.float32), "float32"),
])
def test_bad_negatives_are_rejected(dataset, tokenizer, table, message):
  batcher = _batcher(dataset, tokenizer, num_negatives=2, negatives=lambda epoch: table)
  with pytest.raises(ValueError, match=message):
    batcher.batch(0)


# --- resume and positions -------------------------------------------------------------------------


@pytest.mark.parametrize("start", [1, 3, 4])
def test_resume_equals_uninterrupted(dataset, tokenizer, start):
  full = list(_batcher(dataset, tokenizer).iterate(0, 8))
  resumed = list(_batcher(dataset, tokenizer).iterate(start, 8))
  assert [step for step, _ in resumed] == list(range(start, 8))
  for (step_a, a), (step_b, b) in zip(full[start:], resumed):
    assert step_a == step_b
    _assert_batches_equal(a, b)
  # And iterating equals asking step by step (prefetching changes nothing).
  direct = _batcher(dataset, tokenizer)
  for step, batch in full:
    _assert_batches_equal(batch, direct.batch(step))


def test_iterate_stops_its_thread_when_closed_early(dataset, tokenizer):
  before = threading.active_count()
  iterator = _batcher(dataset, tokenizer).iterate(0, 100)
  next(iterator)
  iterator.close()
  assert threading.active_count() == before
  assert not list(_batcher(dataset, tokenizer).iterate(5, 5))
  with pytest.raises(ValueError):
    list(_batcher(dataset, tokenizer).iterate(5, 4))


def test_position_round_trip(dataset, tokenizer):
  batcher = _batcher(dataset, tokenizer)
  position = batcher.position(7)
  assert position == {"step": 7, "epoch": 2, "batch_in_epoch": 1, "examples_seen": 56,
                      "num_examples": len(dataset.query_ids)}
  restored = json.loads(json.dumps(position))
  batcher.check_position(restored)
  _batcher(dataset, tokenizer, process_index=1, process_count=2).check_position(restored)


def test_check_position_mismatches(dataset, tokenizer):
  position = _batcher(dataset, tokenizer).position(7)
  with pytest.raises(ValueError, match="'epoch'.*train.batch_size 4"):
    _batcher(dataset, tokenizer, global_batch=4).check_position(position)
  # Fewer training examples: 2 steps per epoch instead of 3.
  smaller = pairs.PairDataset(dataset.query_ids[:20], dataset.query_texts[:20],
                              dataset.positives[:20], dataset.doc_texts, dataset.query_rows[:20])
  with pytest.raises(ValueError, match="'epoch'"):
    _batcher(smaller, tokenizer).check_position(position)
  with pytest.raises(ValueError, match="'examples_seen'"):
    _batcher(dataset, tokenizer).check_position({**position, "examples_seen": 55})
  # Different data that leaves the epoch and batch index unchanged is still caught.
  one_more = pairs.PairDataset(*(getattr(dataset, f)[:len(dataset.query_ids) - 1] for f in
                                 ("query_ids", "query_texts", "positives")),
                               dataset.doc_texts, dataset.query_rows[:-1])
  early = _batcher(dataset, tokenizer).position(1)
  with pytest.raises(ValueError, match="'num_examples'"):
    _batcher(one_more, tokenizer).check_position(early)
  with pytest.raises(ValueError, match="batch_in_epoch"):
    _batcher(dataset, tokenizer).check_position({"step": 7, "epoch": 2, "examples_seen": 56})


# --- argument checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"global_batch": 6, "process_count": 4}, "train.batch_size"),
    ({"global_batch": 30}, "train.batch_size"),
    ({"global_batch": 0}, "train.batch_size"),
    ({"num_negatives": -1}, "num_negatives"),
    ({"query_max_length": 1}, "train.query_max_length"),
    ({"passage_max_length": 0}, "train.passage_max_length"),
    ({"pad_to_multiple_of": 0}, "train.pad_to_multiple_of"),
    ({"seed": -1}, "seed"),
    ({"process_index": 2, "process_count": 2}, "process_index"),
])
def test_invalid_arguments(dataset, tokenizer, kwargs, message):
  with pytest.raises(ValueError, match=message):
    _batcher(dataset, tokenizer, **kwargs)


def test_negatives_need_a_negatives_fn(dataset, tokenizer):
  with pytest.raises(ValueError, match="negatives_fn"):
    pairs.PairBatcher(dataset, tokenizer, global_batch=8, num_negatives=2, negatives_fn=None,
                      query_max_length=32, passage_max_length=48, seed=0)


# --- negative sets that change while training (ANCE) --------------------------------------------


class _Set:
  """A NegativeSet whose every negative is one constant corpus row, so a batch shows its set."""

  def __init__(self, version: int, row: int, num_queries: int, width: int = 2):
    self.version, self.row, self.shape = version, row, (num_queries, width)

  def for_epoch(self, epoch: int) -> np.ndarray:
    del epoch
    return np.full(self.shape, self.row, np.int64)


def _negative_rows(batch, tokenizer, dataset, passage_max_length=48) -> set[int]:
  """Which corpus rows the negative slots of a batch hold (matched by their tokens)."""
  by_ids = {tuple(ids): r for r, ids in enumerate(
      tok.tokenize(tokenizer, dataset.doc_texts, passage_max_length))}
  found = set()
  for ids, mask in zip(batch["passage_input_ids"][:, 1:].reshape(-1, batch[
      "passage_input_ids"].shape[-1]), batch["passage_attention_mask"][:, 1:].reshape(
          -1, batch["passage_input_ids"].shape[-1])):
    found.add(by_ids[tuple(_unpadded(ids, mask))])
  return found


def test_swap_between_steps_applies_from_the_next_step(dataset, tokenizer):
  """A set installed after step k's batch was taken (and k+1's prefetched) is used from k+1
  on, and each batch holds the negatives of exactly one set."""
  n = len(dataset.query_ids)
  current = {"set": _Set(0, 11, n)}
  batcher = pairs.PairBatcher(dataset, tokenizer, global_batch=8, num_negatives=2,
                              negatives_fn=None, query_max_length=32, passage_max_length=48,
                              seed=3, negative_sets=lambda: current["set"])
  seen = []
  for step, batch in batcher.iterate(0, 6):
    seen.append((step, int(batch["negatives_version"]),
                 _negative_rows(batch, tokenizer, dataset)))
    if step == 2:  # the prefetch of step 3 is already under way with set 0
      current["set"] = _Set(1, 23, n)
  assert seen == [(0, 0, {11}), (1, 0, {11}), (2, 0, {11}), (3, 1, {23}), (4, 1, {23}),
                  (5, 1, {23})]


def test_concurrent_swaps_never_mix_sets(dataset, tokenizer):
  """Sets replaced from another thread while batches are built: every batch is one set."""
  n = len(dataset.query_ids)
  sets = [_Set(v, v, n) for v in range(40)]
  current = {"set": sets[0]}
  batcher = pairs.PairBatcher(dataset, tokenizer, global_batch=8, num_negatives=2,
                              negatives_fn=None, query_max_length=32, passage_max_length=48,
                              seed=3, negative_sets=lambda: current["set"])
  stop = threading.Event()

  def swapper():
    i = 0
    while not stop.is_set():
      i = (i + 1) % len(sets)
      current["set"] = sets[i]

  thread = threading.Thread(target=swapper)
  thread.start()
  try:
    for step in range(12):
      batch = batcher.batch(step)
      assert _negative_rows(batch, tokenizer, dataset) == {int(batch["negatives_version"])}
  finally:
    stop.set()
    thread.join()


def test_negatives_fn_and_negative_sets_exclude_each_other(dataset, tokenizer):
  with pytest.raises(ValueError, match="not both"):
    pairs.PairBatcher(dataset, tokenizer, global_batch=8, num_negatives=2,
                      negatives_fn=lambda e: None, negative_sets=lambda: None,
                      query_max_length=32, passage_max_length=48, seed=0)


def test_each_process_tokenises_only_its_rows(dataset, tokenizer, monkeypatch):
  """With a token-length table, a process tokenises its 1/P of the batch, nothing more."""
  lengths = pairs.TokenLengths(pairs.token_lengths(tokenizer, dataset.query_texts, 32),
                               pairs.token_lengths(tokenizer, dataset.doc_texts, 48))
  part = _batcher(dataset, tokenizer, process_index=1, process_count=4, lengths=lengths)
  whole = _batcher(dataset, tokenizer)
  seen = []
  original = pairs.tok.tokenize
  monkeypatch.setattr(pairs.tok, "tokenize",
                      lambda tk, texts, length: seen.append(len(texts)) or original(tk, texts,
                                                                                   length))
  batch = part.batch(3)
  assert seen == [2, 2 * 3]  # 8 / 4 queries, each with its positive and 2 negatives
  expected = whole.batch(3)
  # The padded lengths are the global batch's, as the other processes compute them.
  assert batch["query_input_ids"].shape[1] == expected["query_input_ids"].shape[1]
  assert batch["passage_input_ids"].shape[2] == expected["passage_input_ids"].shape[2]
  np.testing.assert_array_equal(batch["query_input_ids"], expected["query_input_ids"][2:4])


def test_token_lengths_of_maxp_documents_are_their_longest_passage(tokenizer):
  texts = ["word " * 100, "short text", ""]
  lengths = pairs.token_lengths(tokenizer, texts, 16, max_passages=3)
  ids, doc_of = pairs.doc_passages.split_documents(tokenizer, texts, 16, 3)
  for doc in range(3):
    assert lengths[doc] == max(len(p) for p, d in zip(ids, doc_of) if d == doc)
  assert lengths[0] == 16 and lengths[2] == 2  # [CLS] [SEP] for the empty document


def test_token_lengths_that_disagree_with_the_tokenizer_are_an_error(dataset, tokenizer):
  short = pairs.TokenLengths(np.full(len(dataset.query_texts), 2, np.int32),
                             np.full(len(dataset.doc_texts), 2, np.int32))
  batcher = _batcher(dataset, tokenizer, process_count=2, lengths=short)
  with pytest.raises(ValueError, match="disagree with the tokenizer"):
    batcher.batch(0)
  with pytest.raises(ValueError, match="lengths cover"):
    _batcher(dataset, tokenizer, process_count=2,
             lengths=pairs.TokenLengths(short.query[:3], short.doc))
