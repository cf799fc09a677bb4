"""ColBERT's input format: [Q]/[D] markers, [MASK] query augmentation, the punctuation skiplist.

As stanford-futuredata/ColBERT (`QueryTokenizer.tensorize`, `DocTokenizer.tensorize`,
`ColBERT.mask`) and PyLate build them:

  query:    [CLS] [Q] q1 ... qn [SEP] [MASK] ... [MASK]     exactly `query_length` tokens
  document: [CLS] [D] d1 ... dm [SEP]                       at most `doc_max_length` tokens

The text is tokenised with the tokenizer's special tokens and truncated to one token less than
the length, then the marker goes in after [CLS]. Query padding is [MASK] (query augmentation):
its attention mask is 0 unless `attend_to_mask_tokens`, yet its output vectors take part in
MaxSim (`query_keep` is 1 everywhere). Document vectors of padding and of punctuation tokens
are dropped (`document_keep`).

Masks come from positions (what was padded), never from token ids: a text that contains the
literal string `[PAD]` tokenises to the pad id at a real position, and ColBERT's id-based
`x != pad_token` test would drop it (and turn it into [MASK] on the query side). No JAX here.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Sequence

import numpy as np

from retrieval_jax.data import pairs
from retrieval_jax.data import tokenize as tok


@dataclasses.dataclass(frozen=True)
class ColbertFormat:
  """Token ids and lengths of the ColBERT input format (`colbert_format` reads them).

  Attributes:
    query_marker_id: [Q] (`[unused0]` in BERT vocabularies, as the released checkpoints).
    doc_marker_id: [D] (`[unused1]`).
    mask_id: The [MASK] id that pads queries.
    pad_id: The tokenizer's padding id (documents).
    skiplist_ids: Token ids whose document vectors are dropped (punctuation); empty: none.
    query_length: Every query's length, markers included (ColBERT: 32).
    doc_max_length: The document cap, markers included (ColBERT v1: 180).
    attend_to_mask_tokens: Whether the [MASK] padding is attended to (off in ColBERT v1/v2
      and PyLate; TCT-ColBERT's student attends).
  """
  query_marker_id: int
  doc_marker_id: int
  mask_id: int
  pad_id: int
  skiplist_ids: frozenset[int]
  query_length: int = 32
  doc_max_length: int = 180
  attend_to_mask_tokens: bool = False

  def __post_init__(self):
    for key in ("query_length", "doc_max_length"):
      if getattr(self, key) < 4:
        raise ValueError(f"{key}={getattr(self, key)} leaves no room for [CLS], the marker, "
                         "a token and [SEP]")


def punctuation_ids(tokenizer) -> frozenset[int]:
  """The skiplist: the first token id of each `string.punctuation` character (ColBERT's)."""
  ids = set()
  for symbol in string.punctuation:
    encoded = tokenizer.encode(symbol, add_special_tokens=False)
    if encoded:
      ids.add(int(encoded[0]))
  return frozenset(ids)


def _token_id(tokenizer, token: str, key: str) -> int:
  """The id of `token`, which must be in the vocabulary (not mapped to [UNK])."""
  token_id = tokenizer.convert_tokens_to_ids(token)
  unknown = tokenizer.unk_token_id
  if token_id is None or (token_id == unknown and token != tokenizer.unk_token):
    raise ValueError(f"{key}={token!r} is not a token of this vocabulary (BERT vocabularies "
                     f"have [unused0], [unused1]; set {key} to one of its tokens)")
  return int(token_id)


def colbert_format(tokenizer, *, query_marker: str = "[unused0]", doc_marker: str = "[unused1]",
                   query_length: int = 32, doc_max_length: int = 180,
                   attend_to_mask_tokens: bool = False,
                   mask_punctuation: bool = True) -> ColbertFormat:
  """The format for `tokenizer` (a HF fast tokenizer with [CLS]/[SEP]/[MASK]-style tokens).

  Raises:
    ValueError: A marker outside the vocabulary, or a tokenizer without a mask or pad token
      (naming the `model.colbert.*` key).
  """
  if tokenizer.mask_token_id is None:
    raise ValueError("the tokenizer has no mask token: ColBERT pads queries with it")
  if tokenizer.pad_token_id is None:
    raise ValueError("the tokenizer has no pad token")
  return ColbertFormat(
      query_marker_id=_token_id(tokenizer, query_marker, "model.colbert.query_marker"),
      doc_marker_id=_token_id(tokenizer, doc_marker, "model.colbert.doc_marker"),
      mask_id=int(tokenizer.mask_token_id), pad_id=int(tokenizer.pad_token_id),
      skiplist_ids=punctuation_ids(tokenizer) if mask_punctuation else frozenset(),
      query_length=int(query_length), doc_max_length=int(doc_max_length),
      attend_to_mask_tokens=bool(attend_to_mask_tokens))


def with_marker(token_ids: Sequence[Sequence[int]], marker: int) -> list[list[int]]:
  """Each sequence with `marker` inserted after its first token ([CLS])."""
  return [[ids[0], marker, *ids[1:]] for ids in token_ids]


def tokenize_queries(tokenizer, fmt: ColbertFormat, texts: Sequence[str]) -> list[list[int]]:
  """Unpadded query ids `[CLS] [Q] q... [SEP]`, at most `query_length` long."""
  return with_marker(tok.tokenize(tokenizer, texts, fmt.query_length - 1), fmt.query_marker_id)


def tokenize_documents(tokenizer, fmt: ColbertFormat, texts: Sequence[str]) -> list[list[int]]:
  """Unpadded document ids `[CLS] [D] d... [SEP]`, at most `doc_max_length` long."""
  return with_marker(tok.tokenize(tokenizer, texts, fmt.doc_max_length - 1), fmt.doc_marker_id)


def query_arrays(fmt: ColbertFormat, input_ids: np.ndarray, attention_mask: np.ndarray
                 ) -> dict[str, np.ndarray]:
  """Padded queries (any width up to `query_length`) in the query format.

  Args:
    fmt: The format.
    input_ids: [n, w] int ids of `[CLS] [Q] q... [SEP]` (w <= query_length), padded.
    attention_mask: [n, w], 1 on real tokens.

  Returns:
    `input_ids` [n, query_length] with the padding as [MASK], `attention_mask` (1 on real
    tokens, and on the [MASK] padding with `attend_to_mask_tokens`), `keep_mask` (all 1: every
    query vector takes part in MaxSim).
  """
  rows, width = input_ids.shape
  if width > fmt.query_length:
    raise ValueError(f"queries of {width} tokens are longer than query_length="
                     f"{fmt.query_length}")
  ids = np.full((rows, fmt.query_length), fmt.mask_id, np.int32)
  mask = np.zeros((rows, fmt.query_length), np.int32)
  real = attention_mask.astype(bool)
  ids[:, :width] = np.where(real, input_ids, fmt.mask_id)
  mask[:, :width] = real
  if fmt.attend_to_mask_tokens:
    mask[:] = 1
  return {"input_ids": ids, "attention_mask": mask, "keep_mask": np.ones_like(mask)}


def document_keep(fmt: ColbertFormat, input_ids: np.ndarray,
                  attention_mask: np.ndarray) -> np.ndarray:
  """[n, w] int32: 1 where a document vector is kept (a real token, not punctuation)."""
  keep = attention_mask.astype(bool)
  if fmt.skiplist_ids:
    keep &= ~np.isin(input_ids, np.fromiter(fmt.skiplist_ids, np.int64))
  return keep.astype(np.int32)


def document_arrays(fmt: ColbertFormat, input_ids: np.ndarray, attention_mask: np.ndarray
                    ) -> dict[str, np.ndarray]:
  """Padded documents `[CLS] [D] d... [SEP]`: the arrays plus their `keep_mask`."""
  return {"input_ids": input_ids.astype(np.int32),
          "attention_mask": attention_mask.astype(np.int32),
          "keep_mask": document_keep(fmt, input_ids, attention_mask)}


def insert_marker_padded(input_ids: np.ndarray, attention_mask: np.ndarray, marker: int,
                         pad_id: int, max_length: int,
                         pad_to_multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Padded `[CLS] x... [SEP]` batches (any leading shape, tokens last) with `marker` after
  [CLS]: one column wider, rounded up to `pad_to_multiple_of` and capped at `max_length`.

  The caller tokenised with one token less than `max_length` (so the marker fits).
  """
  *lead, width = input_ids.shape
  new_width = tok.padded_length(width + 1, pad_to_multiple_of, max_length)
  if new_width < width + 1:
    raise ValueError(f"{width} tokens plus the marker exceed max_length={max_length}")
  ids = np.full((*lead, new_width), pad_id, np.int32)
  mask = np.zeros((*lead, new_width), np.int32)
  ids[..., :1], mask[..., :1] = input_ids[..., :1], attention_mask[..., :1]
  ids[..., 1] = np.where(attention_mask[..., 0] > 0, marker, pad_id)
  mask[..., 1] = attention_mask[..., 0]
  ids[..., 2:width + 1], mask[..., 2:width + 1] = input_ids[..., 1:], attention_mask[..., 1:]
  return ids, mask


class ColbertPairBatcher(pairs.ConvertedBatcher):
  """A `pairs.PairBatcher`'s batches in the ColBERT format (the loop's `Batcher`).

  The inner batcher tokenises queries to `query_length - 1` and passages to
  `doc_max_length - 1` tokens; each batch then gets the markers, the [MASK] query padding
  and the keep masks: `query_input_ids`, `query_attention_mask`, `query_keep_mask`
  [B, query_length]; `passage_input_ids`, `passage_attention_mask`, `passage_keep_mask`
  [B, G, Lp].
  """

  def __init__(self, inner, fmt: ColbertFormat, pad_to_multiple_of: int = 1):
    super().__init__(inner)
    self.format = fmt
    self.pad_to_multiple_of = pad_to_multiple_of

  def convert(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One inner batch in the ColBERT format (other keys unchanged)."""
    fmt = self.format
    out = dict(batch)
    ids, mask = insert_marker_padded(batch["query_input_ids"], batch["query_attention_mask"],
                                     fmt.query_marker_id, fmt.pad_id, fmt.query_length)
    query = query_arrays(fmt, ids, mask)
    ids, mask = insert_marker_padded(batch["passage_input_ids"],
                                     batch["passage_attention_mask"], fmt.doc_marker_id,
                                     fmt.pad_id, fmt.doc_max_length, self.pad_to_multiple_of)
    passage = document_arrays(fmt, ids, mask)
    for prefix, arrays in (("query", query), ("passage", passage)):
      for key, value in arrays.items():
        out[f"{prefix}_{key}"] = value
    return out
