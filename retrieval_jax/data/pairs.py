"""Contrastive (DPR-style) training batches: a query, one positive passage and its hard negatives.

Everything here is a pure function of (seed, step): the epoch order, the positive drawn for each
query and the negatives all come from RNGs seeded by (seed, epoch, purpose), so batch `k` is the
same whether a run reaches it directly or resumes at it, and the same in every process. Each
process tokenises only its own rows of the global batch. jit needs one shape across processes,
so the padded lengths come from `TokenLengths`, every text's token count computed once when
training starts (on several hosts each computes a share and the shares are gathered; see
`recipes.dpr`): the longest sequence of a global batch is then known on every host without
tokenising the other hosts' rows or talking to them.

RNG streams, one per purpose:
  `default_rng([seed, epoch, 2])`: the epoch's example order (`epoch_order`).
  `default_rng([seed, epoch, 1])`: which positive each query gets this epoch.
  `default_rng([seed, epoch])`: hard negatives (`index.mining.sample_negatives`, via the caller).
The order's tag is 2, not 0: `SeedSequence` pads its entropy with zeros, so `[seed, epoch, 0]`
seeds exactly the same generator as `[seed, epoch]`, the negatives' stream.

No JAX in this module (`data/` is numpy only).
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from retrieval_jax.data import passages as doc_passages
from retrieval_jax.data import tokenize as tok
from retrieval_jax.data.beir import BeirData

logger = logging.getLogger(__name__)

# Purpose tags appended to [seed, epoch]; never 0 (a trailing 0 does not change the seed).
_POSITIVE_STREAM = 1
_ORDER_STREAM = 2
# num_examples last: a change of data that also moves the epoch is reported as the epoch.
POSITION_FIELDS = ("step", "epoch", "batch_in_epoch", "examples_seen", "num_examples")


class NegativeSet(Protocol):
  """One immutable set of hard negatives (ANCE swaps sets while training goes on).

  Attributes:
    version: Distinguishes sets; a batch records the version it was built from.
  """
  version: int

  def for_epoch(self, epoch: int) -> np.ndarray:
    """[num_queries, >= num_negatives] corpus rows, rows like `PairDataset.query_ids`."""


@dataclasses.dataclass(frozen=True)
class FixedNegatives:
  """A set that never changes (DPR's BM25 pool): `negatives_fn(epoch)` as version 0."""
  negatives_fn: Callable[[int], np.ndarray]
  version: int = 0

  def for_epoch(self, epoch: int) -> np.ndarray:
    return self.negatives_fn(epoch)


@dataclasses.dataclass(frozen=True)
class TokenLengths:
  """Token counts (special tokens included, capped at the max lengths) of every text.

  Attributes:
    query: [num_queries] int32, like `PairDataset.query_texts`.
    doc: [num_docs] int32, like `PairDataset.doc_texts`; MaxP: each document's longest passage.
  """
  query: np.ndarray
  doc: np.ndarray


def token_lengths(tokenizer, texts: Sequence[str], max_length: int,
                  max_passages: int = 1) -> np.ndarray:
  """[len(texts)] int32 token counts as the batcher pads them: truncated to `max_length`
  (FirstP), or the longest of the first `max_passages` passages (MaxP)."""
  if not len(texts):
    return np.zeros(0, np.int32)
  if max_passages == 1:
    return np.asarray([len(ids) for ids in tok.tokenize(tokenizer, texts, max_length)],
                      np.int32)
  ids, doc_of = doc_passages.split_documents(tokenizer, texts, max_length, max_passages)
  lengths = np.zeros(len(texts), np.int32)
  np.maximum.at(lengths, doc_of, np.asarray([len(row) for row in ids], np.int32))
  return lengths


@dataclasses.dataclass(frozen=True)
class PairDataset:
  """Training queries with at least one positive, and the corpus their passages come from."""
  query_ids: list[str]          # in BeirData.query_ids order
  query_texts: list[str]
  positives: list[np.ndarray]   # per query: int64 corpus rows with relevance > 0, sorted unique
  doc_texts: list[str]          # BeirData.doc_strings(), the whole corpus
  query_rows: np.ndarray        # int64: each kept query's row in BeirData.query_ids


def pairs_from_beir(data: BeirData) -> PairDataset:
  """The (query, positives) examples of a BEIR split.

  A positive is a document judged with relevance > 0 (`BeirData.positive_rows`, shared with
  `index.mining`); a judged-zero document is a negative. Queries with no positive cannot form a
  pair and are dropped.

  Raises:
    ValueError: no query of the split has a positive judgement.
  """
  kept, positives = [], []
  for q, rows in enumerate(data.positive_rows()):
    if len(rows):
      kept.append(q)
      positives.append(rows)
  dropped = len(data.query_ids) - len(kept)
  if dropped:
    logging.info("%s: dropped %d of %d queries with no positive judgement", data.name, dropped,
                 len(data.query_ids))
  if not kept:
    raise ValueError(f"data set {data.name!r}: no query has a positive judgement (relevance > 0) "
                     f"among its {len(data.query_ids)} judged queries")
  return PairDataset(query_ids=[data.query_ids[q] for q in kept],
                     query_texts=[data.query_texts[q] for q in kept], positives=positives,
                     doc_texts=data.doc_strings(), query_rows=np.asarray(kept, np.int64))


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """Full global batches per epoch; the remainder is dropped (DPR/Tevatron `drop_last`), so every
  step has one shape and the in-batch softmax always has `global_batch` candidates."""
  if not 1 <= global_batch <= num_examples:
    raise ValueError(f"train.batch_size must be between 1 and the number of training examples "
                     f"({num_examples}), got {global_batch}")
  return num_examples // global_batch


def _check_seed_epoch(seed: int, epoch: int) -> None:
  if seed < 0:
    raise ValueError(f"seed must be non-negative, got {seed}")
  if epoch < 0:
    raise ValueError(f"epoch must be non-negative, got {epoch}")


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch: a permutation of range(num_examples) (int64), drawn from
  `default_rng([seed, epoch, 2])` (see the module docstring for why not 0)."""
  _check_seed_epoch(seed, epoch)
  return np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(num_examples)


# pylint: disable-next=redefined-outer-name
def step_position(step: int, steps_per_epoch: int) -> tuple[int, int]:
  """(epoch, batch index within the epoch) of a global step."""
  if step < 0:
    raise ValueError(f"step must be non-negative, got {step}")
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
  return divmod(step, steps_per_epoch)


def pad_rows(ids: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """[rows, width] int32 ids and attention mask of unpadded sequences (each at most `width`)."""
  input_ids = np.full((len(ids), width), pad_id, np.int32)
  mask = np.zeros((len(ids), width), np.int32)
  for r, row in enumerate(ids):
    input_ids[r, :len(row)] = row
    mask[r, :len(row)] = 1
  return input_ids, mask


def check_position_fields(position: Mapping[str, int], position_at: Callable[[int], dict],
                          fields: Sequence[str], context: Callable[[dict], str]) -> None:
  """Raises ValueError when a restored data position lacks one of `fields` or differs from
  `position_at(its step)`; `context(expected)` ends the message (what could have changed)."""
  missing = [key for key in fields if key not in position]
  if missing:
    raise ValueError(f"data position {dict(position)} lacks {', '.join(missing)}")
  expected = position_at(int(position["step"]))
  for key in fields:
    if int(position[key]) != expected[key]:
      raise ValueError(f"data position mismatch in {key!r}: the checkpoint says "
                       f"{position[key]}, this run computes {expected[key]} {context(expected)}")


def prefetched_batches(batch_fn: Callable[[int], dict[str, np.ndarray]], start_step: int,
                       end_step: int, thread_name: str
                       ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """(step, batch_fn(step)) for step in [start_step, end_step), the next batch built in a
  thread while the caller trains on this one. For batchers whose batch is a function of its
  step alone, so a resumed run yields what an uninterrupted one does."""
  if not 0 <= start_step <= end_step:
    raise ValueError(f"need 0 <= start_step <= end_step, got {start_step}, {end_step}")
  if start_step == end_step:
    return
  executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=thread_name)
  pending = executor.submit(batch_fn, start_step)
  try:
    for step in range(start_step, end_step):
      current = pending.result()
      if step + 1 < end_step:
        pending = executor.submit(batch_fn, step + 1)
      yield step, current
  finally:
    pending.cancel()  # closed early (break, exception): drop the prefetched batch
    executor.shutdown(wait=True)


class PairBatcher:
  """Process-local tokenised batches of (query, positive, hard negatives), by global step.

  Epoch e's global batch b holds the examples `epoch_order(...)[b * G:(b + 1) * G]`; this process
  gets rows [process_index * G / P, (process_index + 1) * G / P) of it.
  """
  # Batch entries for the host (logs, checks) that never reach the step.
  host_keys = frozenset({"example_index", "negatives_version"})

  def __init__(self, dataset: PairDataset, tokenizer, *, global_batch: int, num_negatives: int,
               negatives_fn: Callable[[int], np.ndarray] | None = None, query_max_length: int,
               passage_max_length: int, seed: int, process_index: int = 0,
               process_count: int = 1, pad_to_multiple_of: int = 32,
               negative_sets: Callable[[], NegativeSet] | None = None, max_passages: int = 1,
               lengths: TokenLengths | None = None):
    """Checks the arguments; nothing is tokenised until a batch is asked for.

    Args:
      dataset: from `pairs_from_beir`.
      tokenizer: a HF fast tokenizer (copied: see below).
      global_batch: examples per step over all processes (`train.batch_size`).
      num_negatives: hard negatives per example, >= 0 (0: in-batch negatives only).
      negatives_fn: epoch -> int array [len(dataset.query_ids), >= num_negatives] of corpus rows,
        rows indexed like `dataset.query_ids`; only the first `num_negatives` columns are used.
        Called at most once per epoch when steps are visited in order (the last epoch's result
        is cached). None only when num_negatives == 0.
      query_max_length: token cap of queries (`train.query_max_length`).
      passage_max_length: token cap of passages (`train.passage_max_length`).
      seed: the run's seed, >= 0.
      process_index: this process (`jax.process_index()`).
      process_count: processes sharing the global batch (`jax.process_count()`).
      pad_to_multiple_of: padded lengths are multiples of this (`train.pad_to_multiple_of`), so
        a run compiles a handful of shapes.
      negative_sets: instead of `negatives_fn`: () -> the `NegativeSet` in use now, for
        negatives that change while training (ANCE). A batch is built from one set read once
        (never a mix of two); `iterate` rebuilds a prefetched batch whose set was replaced
        before its step ran, so a set installed between steps k-1 and k is used from step k on.
      max_passages: 1: a document is its first `passage_max_length` tokens (FirstP). N > 1
        (MaxP): its first N passages of that length (`data.passages.split_documents`), and
        the passage arrays gain an axis of N (a missing passage is all padding).
      lengths: every text's token count (`token_lengths`), which fixes each global batch's
        padded lengths without tokenising the other processes' rows. Needed with several
        processes (computed here over the whole data if not given); one process tokenises the
        whole batch anyway and needs none.

    Raises:
      ValueError: an invalid argument; the message names its config key.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"need 0 <= process_index < process_count, got process_index="
                       f"{process_index}, process_count={process_count}")
    if global_batch % process_count:
      raise ValueError(f"train.batch_size ({global_batch}) must be divisible by the number of "
                       f"processes ({process_count})")
    if num_negatives < 0:
      raise ValueError(f"num_negatives must be non-negative, got {num_negatives}")
    if negatives_fn is not None and negative_sets is not None:
      raise ValueError("give negatives_fn or negative_sets, not both")
    if negatives_fn is None and negative_sets is None and num_negatives > 0:
      raise ValueError(f"num_negatives={num_negatives} needs a negatives_fn or negative_sets")
    for key, value in (("train.query_max_length", query_max_length),
                       ("train.passage_max_length", passage_max_length)):
      if value < 2:
        raise ValueError(f"{key} must be at least 2 (room for special tokens), got {value}")
    if max_passages < 1:
      raise ValueError(f"data.max_passages must be at least 1, got {max_passages}")
    if pad_to_multiple_of < 1:
      raise ValueError(f"train.pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
    _check_seed_epoch(seed, 0)
    self._steps_per_epoch = steps_per_epoch(len(dataset.query_ids), global_batch)
    self.dataset = dataset
    # A private copy: HF fast tokenizers set truncation on the shared backend at every call, so a
    # caller tokenising with other lengths while we prefetch in a thread would race with us.
    self._tokenizer = copy.deepcopy(tokenizer)
    self._pad_id = tokenizer.pad_token_id
    if self._pad_id is None:
      raise ValueError("the tokenizer has no pad token")
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.num_negatives = num_negatives
    self._dynamic = negative_sets is not None
    if negative_sets is None:
      fixed = FixedNegatives(negatives_fn or (lambda epoch: None))
      negative_sets = lambda: fixed
    self._negative_sets = negative_sets
    self.query_max_length = query_max_length
    self.passage_max_length = passage_max_length
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.pad_to_multiple_of = pad_to_multiple_of
    self.max_passages = max_passages
    if lengths is None and process_count > 1:
      logger.info("token lengths of every text, for the padded lengths of the global batches")
      lengths = TokenLengths(
          token_lengths(self._tokenizer, dataset.query_texts, query_max_length),
          token_lengths(self._tokenizer, dataset.doc_texts, passage_max_length, max_passages))
    if lengths is not None and (len(lengths.query) != len(dataset.query_texts)
                                or len(lengths.doc) != len(dataset.doc_texts)):
      raise ValueError(f"lengths cover {len(lengths.query)} queries and {len(lengths.doc)} "
                       f"documents, the data {len(dataset.query_texts)} and "
                       f"{len(dataset.doc_texts)}")
    self._lengths = lengths
    self._counts = np.asarray([len(p) for p in dataset.positives], np.int64)
    # One epoch of state (order, chosen positives, negatives), guarded: `iterate` builds the next
    # batch in a thread while the caller may ask for one itself. Keyed by (epoch, set version).
    self._lock = threading.Lock()
    self._epoch: tuple[int, int] | None = None
    self._epoch_state: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

  @property
  def steps_per_epoch(self) -> int:
    return self._steps_per_epoch

  def _negatives(self, epoch: int, negative_set: NegativeSet) -> np.ndarray:
    """The epoch's [num_queries, num_negatives] corpus rows, checked."""
    num_queries = len(self.dataset.query_ids)
    if self.num_negatives == 0:
      return np.zeros((num_queries, 0), np.int64)
    negatives = np.asarray(negative_set.for_epoch(epoch))
    if (negatives.ndim != 2 or negatives.shape[0] != num_queries
        or negatives.shape[1] < self.num_negatives):
      raise ValueError(f"negatives_fn({epoch}) returned shape {negatives.shape}, expected "
                       f"[{num_queries}, >= {self.num_negatives}] (rows like dataset.query_ids)")
    if not np.issubdtype(negatives.dtype, np.integer):
      raise ValueError(f"negatives_fn({epoch}) returned {negatives.dtype}, expected corpus rows")
    negatives = negatives[:, :self.num_negatives].astype(np.int64)
    num_docs = len(self.dataset.doc_texts)
    if negatives.size and (negatives.min() < 0 or negatives.max() >= num_docs):
      raise ValueError(f"negatives_fn({epoch}) returned rows outside the corpus [0, {num_docs}) "
                       f"(min {negatives.min()}, max {negatives.max()}; -1 is padding, not a row)")
    return negatives

  def _state(self, epoch: int,
             negative_set: NegativeSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, positive row per query, negatives) of an epoch; the caller holds the lock."""
    if self._epoch != (epoch, negative_set.version):
      num_queries = len(self.dataset.query_ids)
      order = epoch_order(num_queries, seed=self.seed, epoch=epoch)
      # One draw for all queries, so a query's positive does not depend on where it lands.
      rng = np.random.default_rng([self.seed, epoch, _POSITIVE_STREAM])
      choice = rng.integers(0, self._counts)
      positive = np.asarray([p[c] for p, c in zip(self.dataset.positives, choice)], np.int64)
      self._epoch_state = (order, positive, self._negatives(epoch, negative_set))
      self._epoch = (epoch, negative_set.version)
    return self._epoch_state

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of global batch `step`.

    Returns:
      `query_input_ids`, `query_attention_mask`: int32 [local, Lq];
      `passage_input_ids`, `passage_attention_mask`: int32 [local, 1 + num_negatives, Lp], slot 0
        the positive, slots 1.. the query's negatives; with max_passages N > 1,
        [local, 1 + num_negatives, N, Lp], each document's passages (a missing one all padding);
      `example_index`: int64 [local], the dataset index of each row;
      `negatives_version`: int64 scalar, the `NegativeSet.version` the negatives came from.
      (`example_index` and `negatives_version` are host-side facts, not model inputs.)
      Lq and Lp are the longest sequence of the global batch rounded up to `pad_to_multiple_of`
      and capped at the max length, so they agree across processes (`TokenLengths`).
    """
    epoch, b = step_position(step, self._steps_per_epoch)
    g, n = self.global_batch, self.num_negatives
    negative_set = self._negative_sets()  # read once: the whole batch comes from this set
    start, stop = self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch
    with self._lock:
      order, positive, negatives = self._state(epoch, negative_set)
      examples = order[b * g:(b + 1) * g].astype(np.int64)
      passages = np.concatenate([positive[examples, None], negatives[examples]], axis=1)
      # Only this process's rows are tokenised.
      query_ids = tok.tokenize(self._tokenizer,
                               [self.dataset.query_texts[i] for i in examples[start:stop]],
                               self.query_max_length)
      passage_ids = self._passage_token_ids(passages[start:stop].reshape(-1))
    if self._lengths is None:  # one process: its rows are the whole batch
      longest_query, longest_passage = max(map(len, query_ids)), max(map(len, passage_ids))
    else:
      longest_query = int(self._lengths.query[examples].max())
      longest_passage = int(self._lengths.doc[passages.reshape(-1)].max())
      if (max(map(len, query_ids)) > longest_query
          or max(map(len, passage_ids)) > longest_passage):
        raise ValueError("the token lengths given to PairBatcher disagree with the tokenizer "
                         "(computed with another tokenizer or other max lengths?)")
    lq = tok.padded_length(longest_query, self.pad_to_multiple_of, self.query_max_length)
    lp = tok.padded_length(longest_passage, self.pad_to_multiple_of, self.passage_max_length)
    q_ids, q_mask = pad_rows(query_ids, lq, self._pad_id)
    per_doc = self.max_passages
    p_ids, p_mask = pad_rows(passage_ids, lp, self._pad_id)
    shape = (self.local_batch, 1 + n, lp) if per_doc == 1 else (self.local_batch, 1 + n,
                                                                 per_doc, lp)
    return {"query_input_ids": q_ids, "query_attention_mask": q_mask,
            "passage_input_ids": p_ids.reshape(shape),
            "passage_attention_mask": p_mask.reshape(shape),
            "example_index": examples[start:stop],
            "negatives_version": np.int64(negative_set.version)}

  def _passage_token_ids(self, docs: np.ndarray) -> list[list[int]]:
    """Token ids of the documents `docs`: one row each (FirstP), or `max_passages` rows each
    (MaxP), a missing passage as an empty row; the caller holds the lock."""
    texts = [self.dataset.doc_texts[r] for r in docs]
    if self.max_passages == 1:
      return tok.tokenize(self._tokenizer, texts, self.passage_max_length)
    ids, doc_of = doc_passages.split_documents(self._tokenizer, texts, self.passage_max_length,
                                               self.max_passages)
    out: list[list[int]] = [[] for _ in range(len(docs) * self.max_passages)]
    first = np.searchsorted(doc_of, doc_of, side="left")  # doc_of is sorted
    for i, (passage, d) in enumerate(zip(ids, doc_of)):
      out[d * self.max_passages + i - first[i]] = passage
    return out

  def position(self, step: int) -> dict[str, int]:
    """The data position after `step` steps, as plain ints (JSON, saved in checkpoints)."""
    epoch, b = step_position(step, self._steps_per_epoch)
    return {"step": int(step), "epoch": int(epoch), "batch_in_epoch": int(b),
            "examples_seen": int(step) * self.global_batch,
            "num_examples": len(self.dataset.query_ids)}

  def check_position(self, position: Mapping[str, int]) -> None:
    """Raises ValueError when a restored position is not where this batcher would be.

    A mismatch means the batch size or the training data changed between saving and resuming:
    the resumed run would silently see a different sequence of examples.
    """
    check_position_fields(
        position, self.position, POSITION_FIELDS,
        lambda expected: (f"for step {expected['step']} (train.batch_size {self.global_batch}, "
                          f"{len(self.dataset.query_ids)} examples, {self._steps_per_epoch} "
                          f"steps per epoch); did the batch size or the data change?"))

  def iterate(self, start_step: int,
              end_step: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(step, batch) for step in [start_step, end_step), the next batch built in a thread.

    Each batch is a function of its step (and, with `negative_sets`, of the set in use when
    its step comes), so a run resumed at step k yields exactly what an uninterrupted run yields
    from k on, prefetching or not.
    """
    if not 0 <= start_step <= end_step:
      raise ValueError(f"need 0 <= start_step <= end_step, got {start_step}, {end_step}")
    if start_step == end_step:
      return
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pair_batches")
    pending = None
    try:
      pending = executor.submit(self.batch, start_step)
      for step in range(start_step, end_step):
        current = pending.result()
        if self._dynamic and current["negatives_version"] != self._negative_sets().version:
          current = self.batch(step)  # a new set was installed after the prefetch: rebuild
        if step + 1 < end_step:
          pending = executor.submit(self.batch, step + 1)
        yield step, current
    finally:
      # Closed early (break, exception): drop the prefetched batch, let the thread finish.
      if pending is not None:
        pending.cancel()
      executor.shutdown(wait=True)


class ConvertedBatcher:
  """A `PairBatcher` whose every batch goes through `convert` (an input format: ColBERT's
  markers, TCT's prefixes). Positions, epochs, resumption and host keys are the inner
  batcher's, so a resumed run sees the same converted batches."""

  def __init__(self, inner: PairBatcher):
    self.inner = inner
    self.host_keys = inner.host_keys

  @property
  def steps_per_epoch(self) -> int:
    return self.inner.steps_per_epoch

  def convert(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self.convert(self.inner.batch(step))

  def iterate(self, start_step: int,
              end_step: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    for step, batch in self.inner.iterate(start_step, end_step):
      yield step, self.convert(batch)

  def position(self, step: int) -> dict[str, int]:
    return self.inner.position(step)

  def check_position(self, position: Mapping[str, int]) -> None:
    self.inner.check_position(position)
