"""TCT-ColBERT's student input format, and its training batches beside the teacher's.

As castorini's released students are used (pyserini `TctColBertQueryEncoder` /
`TctColBertDocumentEncoder`): no special tokens from the tokenizer, a textual prefix instead,

  query:    tokens of "[CLS] [Q] " + q + "[MASK]" * 36, truncated to 36: [CLS] [ q ] q... [MASK]...
  document: tokens of "[CLS] [D] " + d, truncated: [CLS] [ d ] d...

every query position attended to (the [MASK] padding too), and the sentence vector the mean
of the token states after the 4-token prefix (`PoolingConfig.skip_first`). The prefix ids come
from tokenising "[CLS] [Q] " with the student's tokenizer. No JAX here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable, Sequence

import numpy as np

from retrieval_jax.data import colbert_format as cf
from retrieval_jax.data import pairs
from retrieval_jax.data import tokenize as tok


@dataclasses.dataclass(frozen=True)
class TctFormat:
  """Prefix ids and lengths of the student's input.

  Attributes:
    query_prefix: Ids of "[CLS] [Q] " (4 with BERT vocabularies).
    doc_prefix: Ids of "[CLS] [D] ".
    mask_id: Pads queries (attended to).
    query_length: Every query's length, the prefix included (TCT: 36 = 4 + 32).
    doc_max_length: The document cap, the prefix included.
  """
  query_prefix: tuple[int, ...]
  doc_prefix: tuple[int, ...]
  mask_id: int
  query_length: int = 36
  doc_max_length: int = 154

  @property
  def skip(self) -> int:
    """Prefix positions the pooling skips (the query's)."""
    return len(self.query_prefix)

  def __post_init__(self):
    if len(self.query_prefix) != len(self.doc_prefix):
      raise ValueError(f"query prefix {self.query_prefix} and document prefix "
                       f"{self.doc_prefix} differ in length: one pooling skips both")
    if self.query_length <= self.skip or self.doc_max_length <= self.skip:
      raise ValueError(f"lengths {self.query_length} / {self.doc_max_length} leave no room "
                       f"after the {self.skip}-token prefix")


def tct_format(tokenizer, query_length: int = 36, doc_max_length: int = 154) -> TctFormat:
  """The format for `tokenizer` (BERT-style: [CLS] and [MASK] are its special tokens)."""
  prefix = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
  if tokenizer.mask_token_id is None:
    raise ValueError("the student's tokenizer has no mask token: TCT queries are padded with it")
  return TctFormat(prefix("[CLS] [Q] "), prefix("[CLS] [D] "), int(tokenizer.mask_token_id),
                   int(query_length), int(doc_max_length))


# Written beside an exported student's HF files: how to feed and pool it (`encode.load_towers`).
FORMAT_FILE = "tct_format.json"


def format_file(fmt: TctFormat, *, normalize: bool) -> dict:
  """The contents of FORMAT_FILE: the lengths and pooling a loader needs, and a description."""
  return {"query": "[CLS] [Q] {text}[MASK]*; no [SEP]; every position attended",
          "document": "[CLS] [D] {text}; no [SEP]",
          "query_length": fmt.query_length, "document_max_length": fmt.doc_max_length,
          "pooling": f"mean over positions >= {fmt.skip}", "skip_first": fmt.skip,
          "normalize": bool(normalize), "similarity": "dot", "add_special_tokens": False}


def read_format_file(directory: str | os.PathLike, tokenizer) -> tuple[TctFormat, bool] | None:
  """(format, normalize) of an exported student's FORMAT_FILE; None when there is none.

  Raises:
    ValueError: Naming the file, when it is not JSON, lacks a key, or its prefix length is
      not the one `tokenizer` gives "[CLS] [Q] ".
  """
  path = os.path.join(os.fspath(directory), FORMAT_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      written = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path}: not JSON ({error})") from None
  missing = {"query_length", "document_max_length", "skip_first", "normalize"} - set(written)
  if missing:
    raise ValueError(f"{path}: no {sorted(missing)}")
  fmt = tct_format(tokenizer, written["query_length"], written["document_max_length"])
  if fmt.skip != written["skip_first"]:
    raise ValueError(f"{path}: skip_first={written['skip_first']}, but the tokenizer's "
                     f"prefix is {fmt.skip} tokens long")
  return fmt, bool(written["normalize"])


def preparers(tokenizer, fmt: TctFormat) -> tuple[Callable, Callable]:
  """(queries, documents) tokenisers `(texts, max_length) -> ids` for `encode.LoadedEncoder`."""
  return (functools.partial(tokenize_queries, tokenizer, fmt),
          functools.partial(tokenize_documents, tokenizer, fmt))


def content(token_ids: Sequence[int], special_tokens: int = 2) -> list[int]:
  """The text's ids inside a tokenisation with special tokens ([CLS] ... [SEP])."""
  return list(token_ids[1:len(token_ids) - 1]) if special_tokens else list(token_ids)


def query_ids(fmt: TctFormat, token_ids: Sequence[Sequence[int]]) -> list[list[int]]:
  """Student queries from `[CLS] q... [SEP]` tokenisations: prefix, text, [MASK] to length."""
  out = []
  for ids in token_ids:
    row = (list(fmt.query_prefix) + content(ids))[:fmt.query_length]
    out.append(row + [fmt.mask_id] * (fmt.query_length - len(row)))
  return out


def doc_ids(fmt: TctFormat, token_ids: Sequence[Sequence[int]]) -> list[list[int]]:
  """Student documents from `[CLS] d... [SEP]` tokenisations: prefix and text, truncated."""
  return [(list(fmt.doc_prefix) + content(ids))[:fmt.doc_max_length] for ids in token_ids]


def tokenize_queries(tokenizer, fmt: TctFormat, texts: Sequence[str],
                     max_length: int | None = None) -> list[list[int]]:
  """Student query ids of `texts`: `query_length` long (at most `max_length`)."""
  length = min(fmt.query_length, max_length or fmt.query_length)
  capped = dataclasses.replace(fmt, query_length=length)
  return query_ids(capped, tok.tokenize(tokenizer, texts, length - fmt.skip + 2))


def tokenize_documents(tokenizer, fmt: TctFormat, texts: Sequence[str],
                       max_length: int | None = None) -> list[list[int]]:
  """Student document ids of `texts`, at most `max_length` (default `doc_max_length`) long."""
  length = max_length or fmt.doc_max_length
  capped = dataclasses.replace(fmt, doc_max_length=length)
  return doc_ids(capped, tok.tokenize(tokenizer, texts, length - fmt.skip + 2))


def text_lengths(fmt: TctFormat) -> tuple[int, int]:
  """(query, document) caps to tokenise to, special tokens included, so that `query_ids` and
  `doc_ids` see every token they keep."""
  return fmt.query_length - fmt.skip + 2, fmt.doc_max_length - fmt.skip + 2


def _rows(input_ids: np.ndarray, attention_mask: np.ndarray) -> list[list[int]]:
  return [row[:int(n)].tolist() for row, n in zip(input_ids, attention_mask.sum(-1))]


def _padded(rows: list[list[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for r, row in enumerate(rows):
    ids[r, :len(row)], mask[r, :len(row)] = row, 1
  return ids, mask


def truncate_padded(input_ids: np.ndarray, attention_mask: np.ndarray, max_length: int,
                    sep_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Padded `[CLS] x... [SEP]` rows (any leading shape) cut to `max_length` with the [SEP]
  kept last, as tokenising with that cap would give."""
  *lead, width = input_ids.shape
  rows = _rows(input_ids.reshape(-1, width), attention_mask.reshape(-1, width))
  cut = [row if len(row) <= max_length else row[:max_length - 1] + [sep_id] for row in rows]
  ids, mask = _padded(cut, min(width, max_length), pad_id)
  return ids.reshape(*lead, -1), mask.reshape(*lead, -1)


class TctPairBatcher(pairs.ConvertedBatcher):
  """A `pairs.PairBatcher`'s batches for TCT-ColBERT: the student's inputs (`query_*`,
  `passage_*`, TCT format) and, with a teacher, its ColBERT-format inputs (`teacher_query_*`,
  `teacher_passage_*`). The inner batcher tokenises to caps that cover both
  (`batcher_lengths`); the teacher shares the student's vocabulary.
  """

  def __init__(self, inner, fmt: TctFormat, teacher: cf.ColbertFormat | None, *, sep_id: int,
               pad_id: int, pad_to_multiple_of: int = 1):
    super().__init__(inner)
    self.format, self.teacher = fmt, teacher
    self.sep_id, self.pad_id = sep_id, pad_id
    self.pad_to_multiple_of = pad_to_multiple_of

  def _student(self, ids: np.ndarray, mask: np.ndarray, query: bool):
    *lead, width = ids.shape
    rows = _rows(ids.reshape(-1, width), mask.reshape(-1, width))
    if query:
      rows = query_ids(self.format, rows)
      width = self.format.query_length
    else:
      rows = doc_ids(self.format, rows)
      # From the inner width (the global batch's, the same on every process), not from this
      # process's rows: [CLS] ... [SEP] becomes the prefix and the text.
      width = tok.padded_length(width - 2 + self.format.skip, self.pad_to_multiple_of,
                                self.format.doc_max_length)
    out_ids, out_mask = _padded(rows, width, self.pad_id)
    return out_ids.reshape(*lead, width), out_mask.reshape(*lead, width)

  def _teacher(self, ids: np.ndarray, mask: np.ndarray, query: bool) -> dict[str, np.ndarray]:
    fmt = self.teacher
    length = (fmt.query_length if query else fmt.doc_max_length) - 1
    ids, mask = truncate_padded(ids, mask, length, self.sep_id, self.pad_id)
    marker = fmt.query_marker_id if query else fmt.doc_marker_id
    ids, mask = cf.insert_marker_padded(ids, mask, marker, fmt.pad_id, length + 1,
                                        1 if query else self.pad_to_multiple_of)
    return cf.query_arrays(fmt, ids, mask) if query else cf.document_arrays(fmt, ids, mask)

  def convert(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(batch)
    for side in ("query", "passage"):
      ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
      if self.teacher is not None:
        for key, value in self._teacher(ids, mask, side == "query").items():
          out[f"teacher_{side}_{key}"] = value
      out[f"{side}_input_ids"], out[f"{side}_attention_mask"] = self._student(
          ids, mask, side == "query")
    return out


def batcher_lengths(fmt: TctFormat, teacher: cf.ColbertFormat | None) -> tuple[int, int]:
  """(query, passage) caps for the inner batcher: enough for the student and the teacher."""
  query, passage = text_lengths(fmt)
  if teacher is not None:
    query = max(query, teacher.query_length - 1)
    passage = max(passage, teacher.doc_max_length - 1)
  return query, passage
