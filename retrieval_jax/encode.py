"""Embed texts with a sharded, length-bucketed, jit-compiled forward.

The one place evaluation, negative mining and benchmarks get embeddings from. The batch is
split over a 1-D `data` mesh of all local devices (parameters replicated), batches are sorted
by length so padding stays small, and the next batch is dispatched before the previous one is
copied back, so tokenised input preparation overlaps device work.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from retrieval_jax import distributed, sharding
from retrieval_jax.data import passages
from retrieval_jax.data import tct_format
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import bow_mlp, hf
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder
from retrieval_jax.models.pooling import PoolingConfig

DATA_AXIS = sharding.DATA_AXIS


@dataclasses.dataclass
class LoadedEncoder:
  """A model ready to embed: module, params, tokenizer and where they came from.

  `prepare`, when set, replaces plain tokenisation with the model's own input format
  (TCT-ColBERT's prefixes and [MASK] padding): (texts, max_length) -> ids, each at most
  `max_length` long. `model` is a `TextEncoder` or a `BowMlp` (whose `encoder` is its
  `BowConfig` and whose `pooling` is a masked mean).
  """
  model: TextEncoder | bow_mlp.BowMlp
  params: Any
  tokenizer: Any
  model_dir: pathlib.Path
  prepare: Callable[[Sequence[str], int], list[list[int]]] | None = None

  def token_ids(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """The model's input ids of `texts`, each at most `max_length` long."""
    if self.prepare is not None:
      return self.prepare(texts, max_length)
    return tok.tokenize(self.tokenizer, texts, max_length)

  @property
  def config(self) -> EncoderConfig:
    return self.model.encoder

  @property
  def pooling(self) -> PoolingConfig:
    return self.model.pooling


def load_encoder(name_or_path: str | os.PathLike, pooling: str | PoolingConfig | None = None,
                 normalize: bool | None = None, dtype: Any = jnp.float32) -> LoadedEncoder:
  """Loads a HF directory, hub id or `minilm` (the packaged all-MiniLM-L6-v2), or a BoW-MLP
  export (`bow_mlp.save`).

  Args:
    name_or_path: Model directory, hub id, or a packaged name.
    pooling: `cls`, `mean`, `pooler`, a PoolingConfig, or None for what the checkpoint's
      sentence-transformers files declare (CLS if none).
    normalize: Override L2 normalisation (None keeps the checkpoint's / config's choice).
    dtype: Computation dtype (parameters stay float32).
  """
  model_dir = hf.resolve_model_dir(name_or_path)
  if bow_mlp.is_saved(model_dir):
    if pooling not in (None, "mean"):
      raise ValueError(f"{model_dir} is a BoW-MLP, which averages its tokens: pooling "
                       f"{pooling!r} does not apply")
    overrides = {} if normalize is None else {"normalize": normalize}
    config, params = bow_mlp.load(model_dir, dtype=dtype, **overrides)
    return LoadedEncoder(bow_mlp.BowMlp(config), params, tok.load_tokenizer(model_dir),
                         model_dir)
  config, params, declared = hf.load_pretrained(model_dir, dtype=dtype)
  if isinstance(pooling, PoolingConfig):
    pooling_config = pooling
  else:
    pooling_config = declared or PoolingConfig()
    if pooling is not None:
      pooling_config = dataclasses.replace(pooling_config, mode=pooling)
  if normalize is not None:
    pooling_config = dataclasses.replace(pooling_config, normalize=normalize)
  if pooling_config.projection_dim and "head" not in params:
    raise ValueError(f"pooling asks for a projection but {model_dir} has no Dense module")
  model = TextEncoder(config, pooling_config)
  return LoadedEncoder(model, params, tok.load_tokenizer(model_dir), model_dir)


def load_towers(name_or_path: str | os.PathLike, pooling: str | PoolingConfig | None = None,
                normalize: bool | None = None, dtype: Any = jnp.float32
                ) -> tuple[LoadedEncoder, LoadedEncoder]:
  """(query, passage) encoders of a model: `load_encoder` twice over one set of weights, or,
  for an exported TCT-ColBERT student (`tct_format.json` beside its weights), each with
  its own input format and the mean after the prefix.

  Raises:
    ValueError: A pooling given for a TCT-ColBERT student (its file fixes it).
  """
  encoder = load_encoder(name_or_path, pooling, normalize, dtype)
  found = tct_format.read_format_file(encoder.model_dir, encoder.tokenizer)
  if found is None:
    return encoder, encoder
  if pooling is not None:
    raise ValueError(f"{encoder.model_dir} is a TCT-ColBERT student: its pooling is the "
                     f"mean after the prefix ({tct_format.FORMAT_FILE}); give no pooling")
  fmt, written_normalize = found
  model = TextEncoder(encoder.config, PoolingConfig(
      mode="mean", skip_first=fmt.skip,
      normalize=written_normalize if normalize is None else normalize))
  query, passage = tct_format.preparers(encoder.tokenizer, fmt)
  return (dataclasses.replace(encoder, model=model, prepare=query),
          dataclasses.replace(encoder, model=model, prepare=passage))


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The given devices (default: all local devices) on the `data` axis (`sharding.local_mesh`)."""
  return sharding.local_mesh(devices)


# XLA:CPU options of the encoding forward: without YNNPACK fusions, XLA runs the large
# forward matmuls ([rows x length, hidden] by [hidden, ...]) through its own GEMMs, which are
# faster there (WORKSPACE, "Performance"). The training step keeps the defaults.
CPU_FORWARD_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def forward_compiler_options(mesh: Mesh) -> dict[str, str] | None:
  """`jax.jit` compiler options of the encoding forward on `mesh`: CPU ones, else none."""
  platforms = {device.platform for device in mesh.devices.flat}
  return dict(CPU_FORWARD_COMPILER_OPTIONS) if platforms == {"cpu"} else None


@functools.lru_cache(maxsize=16)
def _make_forward(model: TextEncoder, mesh: Mesh):
  """(the jitted forward, the params' sharding, the rows' sharding): params replicated, rows
  split over `data`.

  Cached per (model, mesh) — modules and meshes hash by value — so repeated calls (queries
  then corpus, ANCE refreshes) reuse compiled shapes instead of compiling again.
  """
  replicated = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P(DATA_AXIS))

  def forward(params, input_ids, attention_mask):
    return model.apply({"params": params}, input_ids, attention_mask)

  forward = jax.jit(forward, in_shardings=(replicated, rows, rows), out_shardings=rows,
                    compiler_options=forward_compiler_options(mesh))
  return forward, replicated, rows


def encode_texts(encoder: LoadedEncoder, texts: Sequence[str], *, max_length: int,
                 batch_size: int = 128, mesh: Mesh | None = None, out_dtype=np.float32,
                 pad_to_multiple_of: int = 16, progress: bool = True,
                 desc: str = "encode") -> np.ndarray:
  """Embeds `texts` in input order: tokenised (truncated to `max_length`, special tokens
  included), then `encode_token_ids`, whose arguments the others are.

  Args:
    encoder: From `load_encoder` (or built by a recipe).
    texts: The strings (for documents: title + " " + text).

  Returns:
    [len(texts), dim] array.
  """
  if out_dtype not in (np.float32, np.float16):
    raise ValueError(f"out_dtype must be float32 or float16, got {out_dtype}")
  if not len(texts):
    raise ValueError("no texts to encode")
  token_ids = encoder.token_ids(texts, max_length)
  return encode_token_ids(encoder, token_ids, max_length=max_length, batch_size=batch_size,
                          mesh=mesh, out_dtype=out_dtype, pad_to_multiple_of=pad_to_multiple_of,
                          progress=progress, desc=desc)


def encode_token_ids(encoder: LoadedEncoder, token_ids: Sequence[Sequence[int]], *,
                     max_length: int, batch_size: int = 128, mesh: Mesh | None = None,
                     out_dtype=np.float32, pad_to_multiple_of: int = 16, progress: bool = True,
                     desc: str = "encode") -> np.ndarray:
  """Embeds already-tokenised sequences in input order (e.g. MaxP passages).

  Args:
    encoder: From `load_encoder` (or built by a recipe).
    token_ids: Unpadded token ids with special tokens, each at most `max_length` long.
    max_length: Token cap, special tokens included (the largest padded length).
    batch_size: Global rows per forward; rounded up to a multiple of the mesh size.
    mesh: Devices to shard the batch over (default: all local devices).
    out_dtype: float32 or float16 for the returned array.
    pad_to_multiple_of: Length bucket size (fewer compiled shapes vs less padding).
    progress: Show a tqdm bar.
    desc: The bar's label.

  Returns:
    [len(token_ids), dim] array.

  Raises:
    ValueError: on an unsupported out_dtype, no sequences, or a sequence over max_length.
  """
  if out_dtype not in (np.float32, np.float16):
    raise ValueError(f"out_dtype must be float32 or float16, got {out_dtype}")
  if not len(token_ids):
    raise ValueError("no token_ids to encode")
  mesh = mesh or data_mesh()
  devices = mesh.devices.size
  batch_size = -(-batch_size // devices) * devices
  forward, replicated, rows = _make_forward(encoder.model, mesh)
  params = jax.device_put(encoder.params, replicated)
  pad_id = encoder.tokenizer.pad_token_id or 0
  batches = tok.length_bucketed_batches(token_ids, batch_size, pad_id, max_length,
                                        pad_to_multiple_of=pad_to_multiple_of)
  out: np.ndarray | None = None
  pending: collections.deque = collections.deque()
  bar = tqdm(total=len(token_ids), desc=desc, unit="text", disable=not progress)

  def collect():
    nonlocal out
    batch, result = pending.popleft()
    values = np.asarray(result)
    if out is None:
      out = np.empty((len(token_ids), values.shape[-1]), dtype=out_dtype)
    real = batch.indices >= 0
    out[batch.indices[real]] = values[real]
    bar.update(batch.num_real)

  for batch in batches:
    # Dispatch is asynchronous: keep one batch in flight while the host prepares the next.
    # Placed explicitly: with several processes jit refuses numpy inputs it would have to split.
    inputs = jax.device_put((batch.input_ids, batch.attention_mask), rows)
    pending.append((batch, forward(params, *inputs)))
    if len(pending) > 1:
      collect()
  while pending:
    collect()
  bar.close()
  assert out is not None  # token_ids is non-empty, so at least one batch ran.
  return out


def encode_texts_sharded(encoder: LoadedEncoder, texts: Sequence[str], **kwargs) -> np.ndarray:
  """`encode_texts` of all `texts`, each process encoding a share, gathered on every process.

  A collective on several processes (call it from the main thread of every process); one
  process encodes everything. Keyword arguments are `encode_texts`'s.
  """
  start, stop = distributed.shard_range(len(texts), align=1)
  local = (encode_texts(encoder, texts[start:stop], **kwargs) if stop > start
           else np.zeros((0, 0), kwargs.get("out_dtype", np.float32)))
  # A process with no texts learns the width from the others.
  dim = int(distributed.allgather_rows(np.asarray([local.shape[1]], np.int32)).max())
  if local.shape[1] != dim:
    local = np.zeros((0, dim), local.dtype)
  return distributed.allgather_rows(local)


@dataclasses.dataclass(frozen=True)
class DocumentShard:
  """This process's share of a corpus, embedded (`encode_document_shard`).

  Attributes:
    embeddings: [rows, dim]: one row per document (FirstP), or per passage (MaxP).
    doc_of: MaxP: [rows] int64, each row's document relative to `start`; None for FirstP.
    start: The shard's first document row in the corpus.
    stop: One past its last.
  """
  embeddings: np.ndarray
  doc_of: np.ndarray | None
  start: int
  stop: int


def encode_document_shard(encoder: LoadedEncoder, doc_texts: Sequence[str], *, max_length: int,
                          max_passages: int = 1, dim: int, **kwargs) -> DocumentShard:
  """Embeds this process's contiguous share of the documents (`distributed.shard_range`).

  No communication: each process encodes its documents on its own devices. With
  `max_passages` > 1 a document is split into up to that many passages of `max_length`
  tokens, each embedded (MaxP). `dim` sizes an empty shard; other keyword arguments are
  `encode_token_ids`'s.
  """
  start, stop = distributed.shard_range(len(doc_texts))
  texts = doc_texts[start:stop]
  doc_of = None if max_passages == 1 else np.zeros((0,), np.int64)
  if not texts:
    return DocumentShard(np.zeros((0, dim), kwargs.get("out_dtype", np.float32)), doc_of,
                         start, stop)
  if max_passages == 1:
    token_ids = encoder.token_ids(texts, max_length)
  elif encoder.prepare is not None:
    raise ValueError("max_passages > 1 (MaxP) is not available for a model with its own input "
                     "format (prepare)")
  else:
    token_ids, doc_of = passages.split_documents(encoder.tokenizer, texts, max_length,
                                                 max_passages)
  return DocumentShard(encode_token_ids(encoder, token_ids, max_length=max_length, **kwargs),
                       doc_of, start, stop)


def save_embeddings(path: str | os.PathLike, embeddings: np.ndarray,
                    dtype=np.float32) -> epath.Path:
  """Writes embeddings as .npy in float32 or float16, local or remote (`gs://...`).

  Args:
    path: The file; `.npy` is appended if it lacks it (as `np.save` does with a name). Missing
      parent directories are created.
    embeddings: The array to write.
    dtype: `np.float32` or `np.float16`.

  Returns:
    The file written.
  """
  if dtype not in (np.float32, np.float16):
    raise ValueError(f"embeddings are saved as float32 or float16, not {dtype}")
  path = epath.Path(path)
  if not path.name.endswith(".npy"):
    path = path.with_name(path.name + ".npy")
  path.parent.mkdir(parents=True, exist_ok=True)
  # A file object, not a name: numpy opens names with the local `open`.
  with path.open("wb") as f:
    np.save(f, embeddings.astype(dtype))
  return path
