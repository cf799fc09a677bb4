"""Token vectors for late interaction (ColBERT): queries [n, Lq, dim], documents as kept rows.

The token-level counterpart of `encode.py`, with the same machinery: a jit-compiled forward
split over a `data` mesh of the local devices, length-bucketed batches, the next batch
dispatched before the previous one is read back. Queries come out whole (every position,
the [MASK] augmentation included: all of them take part in MaxSim); documents come out as
the rows their keep mask selects (no padding, no punctuation), concatenated in input order
with each document's count, ready for `index.maxsim.TokenStore`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import pathlib
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from retrieval_jax import distributed, encode
from retrieval_jax.data import colbert_format as cf
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import colbert_files
from retrieval_jax.models.encoder import TextEncoder
from retrieval_jax.models.heads import TokenProjectionConfig


@dataclasses.dataclass
class TokenEncoder:
  """A ColBERT model ready to encode: a `TextEncoder` with a token head, its params, the
  tokenizer and the input format.

  `corpora` holds document tokens already encoded with these params, by a caller's key: the
  evaluators of one evaluation round share a corpus through it (`evaluators.maxsim`). A
  `dataclasses.replace` copy shares the dict, so keys name the format too.
  """
  model: TextEncoder
  params: Any
  tokenizer: Any
  format: cf.ColbertFormat
  model_dir: pathlib.Path | None = None
  corpora: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def dim(self) -> int:
    return self.model.token_projection.dim


def format_of(tokenizer, settings: colbert_files.ColbertSettings) -> cf.ColbertFormat:
  """The input format a ColBERT directory's settings describe."""
  return cf.colbert_format(tokenizer, query_marker=settings.query_marker,
                           doc_marker=settings.doc_marker, query_length=settings.query_length,
                           doc_max_length=settings.doc_max_length,
                           attend_to_mask_tokens=settings.attend_to_mask_tokens,
                           mask_punctuation=settings.mask_punctuation)


def load_token_encoder(name_or_path, *, dtype=None, doc_max_length: int | None = None
                       ) -> TokenEncoder:
  """A ColBERT directory (stanford or PyLate layout; a hub id such as
  `colbert-ir/colbertv2.0`) ready to encode.

  Args:
    name_or_path: The directory or hub id.
    dtype: Computation dtype (default float32).
    doc_max_length: Override the directory's document length (ColBERT indexes with a
      longer one than it trains with).
  """
  overrides = {} if dtype is None else {"dtype": dtype}
  config, params, settings, model_dir = colbert_files.load(name_or_path, **overrides)
  if doc_max_length is not None:
    settings = dataclasses.replace(settings, doc_max_length=int(doc_max_length))
  model = TextEncoder(config, token_projection=TokenProjectionConfig(dim=settings.dim))
  tokenizer = tok.load_tokenizer(model_dir)
  return TokenEncoder(model, params, tokenizer, format_of(tokenizer, settings), model_dir)


@functools.lru_cache(maxsize=16)
def _make_forward(model: TextEncoder, mesh: Mesh):
  """(jitted token forward, params' sharding, rows' sharding), cached like encode's."""
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P(encode.DATA_AXIS))

  def forward(params, input_ids, attention_mask, keep_mask):
    return model.apply({"params": params}, input_ids, attention_mask, keep_mask,
                       method=TextEncoder.token_vectors)

  return jax.jit(forward, in_shardings=(replicated, rows, rows, rows),
                 out_shardings=rows), replicated, rows


def _run(encoder: TokenEncoder, batches: Iterator[tuple[np.ndarray, dict]], total: int,
         consume: Callable[[np.ndarray, dict, np.ndarray], None], *, mesh: Mesh | None,
         progress: bool, desc: str) -> None:
  """Runs (indices, arrays) batches through the forward, one in flight while the next is
  prepared; `consume(indices, arrays, vectors)` gets each result in order."""
  mesh = mesh or encode.data_mesh()
  forward, replicated, rows = _make_forward(encoder.model, mesh)
  params = jax.device_put(encoder.params, replicated)
  pending: collections.deque = collections.deque()
  bar = tqdm(total=total, desc=desc, unit="text", disable=not progress)

  def collect():
    indices, arrays, result = pending.popleft()
    consume(indices, arrays, np.asarray(result))
    bar.update(int(np.sum(indices >= 0)))

  for indices, arrays in batches:
    inputs = jax.device_put((arrays["input_ids"], arrays["attention_mask"],
                             arrays["keep_mask"]), rows)
    pending.append((indices, arrays, forward(params, *inputs)))
    if len(pending) > 1:
      collect()
  while pending:
    collect()
  bar.close()


def _rounded(batch_size: int, mesh: Mesh | None) -> int:
  devices = (mesh or encode.data_mesh()).devices.size
  return -(-batch_size // devices) * devices


def encode_queries(encoder: TokenEncoder, texts: Sequence[str], *, batch_size: int = 128,
                   mesh: Mesh | None = None, progress: bool = True,
                   desc: str = "queries") -> np.ndarray:
  """float32 [len(texts), query_length, dim]: every query position's vector, input order."""
  if not len(texts):
    raise ValueError("no queries to encode")
  fmt = encoder.format
  token_ids = cf.tokenize_queries(encoder.tokenizer, fmt, texts)
  batch_size = _rounded(batch_size, mesh)
  out = np.zeros((len(texts), fmt.query_length, encoder.dim), np.float32)

  def batches():
    for batch in tok.length_bucketed_batches(token_ids, batch_size, fmt.pad_id,
                                             fmt.query_length, pad_to_multiple_of=1):
      yield batch.indices, cf.query_arrays(fmt, batch.input_ids, batch.attention_mask)

  def consume(indices, _, vectors):
    real = indices >= 0
    out[indices[real]] = vectors[real]

  _run(encoder, batches(), len(texts), consume, mesh=mesh, progress=progress, desc=desc)
  return out


@dataclasses.dataclass(frozen=True)
class DocumentTokens:
  """Kept token vectors of documents: `vectors` [sum(lengths), dim], document after document
  in input order; `lengths` [num_docs] int64."""
  vectors: np.ndarray
  lengths: np.ndarray

  @property
  def offsets(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)


def encode_documents(encoder: TokenEncoder, texts: Sequence[str], *, batch_size: int = 128,
                     mesh: Mesh | None = None, out_dtype=np.float16,
                     pad_to_multiple_of: int = 16, progress: bool = True,
                     desc: str = "corpus") -> DocumentTokens:
  """The kept token vectors of every document (padding and punctuation dropped).

  Args:
    encoder: The ColBERT model.
    texts: Document strings (BEIR: title + " " + text).
    batch_size: Global rows per forward, rounded up to a multiple of the mesh size.
    mesh: Devices to split the batch over (default: all local devices).
    out_dtype: float16 (storage) or float32.
    pad_to_multiple_of: Length bucket size.
    progress: Show a tqdm bar.
    desc: Its label.
  """
  if out_dtype not in (np.float16, np.float32):
    raise ValueError(f"out_dtype must be float16 or float32, got {out_dtype}")
  if not len(texts):
    raise ValueError("no documents to encode")
  fmt = encoder.format
  token_ids = cf.tokenize_documents(encoder.tokenizer, fmt, texts)
  pieces: list[np.ndarray | None] = [None] * len(texts)

  def batches():
    for batch in tok.length_bucketed_batches(token_ids, _rounded(batch_size, mesh), fmt.pad_id,
                                             fmt.doc_max_length,
                                             pad_to_multiple_of=pad_to_multiple_of):
      yield batch.indices, cf.document_arrays(fmt, batch.input_ids, batch.attention_mask)

  def consume(indices, arrays, vectors):
    keep = arrays["keep_mask"].astype(bool)
    for row, index in enumerate(indices):
      if index >= 0:
        pieces[index] = vectors[row][keep[row]].astype(out_dtype)

  _run(encoder, batches(), len(texts), consume, mesh=mesh, progress=progress, desc=desc)
  lengths = np.asarray([len(p) for p in pieces], np.int64)
  return DocumentTokens(np.concatenate(pieces, axis=0), lengths)


def encode_queries_sharded(encoder: TokenEncoder, texts: Sequence[str],
                           **kwargs) -> np.ndarray:
  """`encode_queries` of all `texts`, a share per process, gathered on every process (a
  collective on several processes)."""
  start, stop = distributed.shard_range(len(texts), align=1)
  fmt = encoder.format
  local = (encode_queries(encoder, texts[start:stop], **kwargs) if stop > start
           else np.zeros((0, fmt.query_length, encoder.dim), np.float32))
  flat = distributed.allgather_rows(local.reshape(len(local), -1))
  return flat.reshape(-1, fmt.query_length, encoder.dim)
