"""Contriever's training pairs: two independent random crops of one chunk of a token stream.

As facebookresearch/contriever `src/data.py` and `preprocess.py`: every text of a corpus is
tokenised without special tokens and the ids are concatenated into one stream per source;
an epoch cuts each stream into chunks of `chunk_length` tokens from an offset drawn anew
each epoch (`Dataset.generate_offset`); an example is one chunk, its query and key are two
independent crops (`randomcrop`: length `int(chunk_length * U(ratio_min, ratio_max))`,
start uniform), each with token deletion (`deleteword`: a token is dropped with probability
p), then [CLS] ... [SEP] around it (`moco.py` sets BERT's bos/eos to them).

Following the code where it and the paper differ: an example's source is drawn with
probability proportional to `num_chunks ** sampling_coefficient` (0: sources equally likely)
and its chunk uniformly, with replacement (`MultiDataset.__getitem__` ignores the sampler's
index); `sample="permutation"` visits each chunk once per epoch instead (one source only).

Every draw of example e comes from `default_rng([seed, e, 3])`, so a batch is a function of
(seed, step): the same on any process count and after a resume. The crop lengths depend on
the draws alone (chunks are full), so every process knows the padded width of the whole
global batch without the other processes' tokens. No JAX here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from retrieval_jax.data import pairs
from retrieval_jax.data import tokenize as tok

SAMPLES = ("replacement", "permutation")
POSITION_FIELDS = ("step", "epoch", "batch_in_epoch", "examples_seen", "num_chunks")
_EXAMPLE_STREAM = 3
_OFFSET_STREAM = 4
_ORDER_STREAM = 5


@dataclasses.dataclass(frozen=True)
class CropSettings:
  """How chunks are cut and cropped (`config.data.crop`).

  Attributes:
    chunk_length: Tokens per chunk (Contriever: 256).
    ratio_min: Smallest crop, as a share of the chunk (the released script: 0.05; the paper's
      text says 0.1).
    ratio_max: Largest crop share (0.5).
    deletion: Probability that a token of a crop is dropped (0.1; 0: no augmentation).
    sampling_coefficient: Sources are drawn with probability proportional to
      num_chunks ** coefficient (0: equally likely, as the released script).
    sample: `replacement` (the reference code) or `permutation`.
  """
  chunk_length: int = 256
  ratio_min: float = 0.05
  ratio_max: float = 0.5
  deletion: float = 0.1
  sampling_coefficient: float = 0.0
  sample: str = "replacement"

  def __post_init__(self):
    if self.chunk_length < 2:
      raise ValueError(f"data.crop.chunk_length must be at least 2, got {self.chunk_length}")
    if not 0.0 < self.ratio_min <= self.ratio_max <= 1.0:
      raise ValueError(f"need 0 < data.crop.ratio_min <= data.crop.ratio_max <= 1, got "
                       f"{self.ratio_min} and {self.ratio_max}")
    if int(self.chunk_length * self.ratio_min) < 1:
      raise ValueError(f"data.crop.ratio_min={self.ratio_min} of a {self.chunk_length}-token "
                       f"chunk is an empty crop")
    if not 0.0 <= self.deletion < 1.0:
      raise ValueError(f"data.crop.deletion must be in [0, 1), got {self.deletion}")
    if self.sample not in SAMPLES:
      raise ValueError(f"data.crop.sample={self.sample!r} is not one of {SAMPLES}")

  @property
  def max_crop(self) -> int:
    """The longest crop, special tokens excluded."""
    return int(self.chunk_length * self.ratio_max)


def epoch_offset(seed: int, epoch: int, source: int, chunk_length: int) -> int:
  """Where epoch `epoch` starts cutting source `source` (uniform in [0, chunk_length))."""
  return int(np.random.default_rng([seed, epoch, source, _OFFSET_STREAM]).integers(chunk_length))


def num_chunks(stream_length: int, chunk_length: int, offset: int = 0) -> int:
  return max(0, (stream_length - offset) // chunk_length)


@dataclasses.dataclass(frozen=True)
class Crop:
  """One crop of a chunk: `start`, `length`, and the kept positions after deletion."""
  start: int
  length: int
  keep: np.ndarray  # bool [length]

  def apply(self, chunk: np.ndarray) -> np.ndarray:
    return chunk[self.start:self.start + self.length][self.keep]

  @property
  def kept(self) -> int:
    return int(self.keep.sum())


def draw_crop(rng: np.random.Generator, chunk_length: int, settings: CropSettings) -> Crop:
  """`randomcrop` then `deleteword` on a chunk of `chunk_length` tokens."""
  ratio = rng.uniform(settings.ratio_min, settings.ratio_max)
  length = int(chunk_length * ratio)
  start = int(rng.integers(0, chunk_length - length + 1))
  keep = rng.random(length) > settings.deletion
  return Crop(start, length, keep)


@dataclasses.dataclass(frozen=True)
class ExampleDraw:
  """Everything random about one example: its chunk and its two crops."""
  source: int
  chunk: int
  query: Crop
  key: Crop


class CropPairBatcher:
  """Process-local batches of (query crop, key crop) by global step (module docstring).

  Batches have `query_input_ids`, `query_attention_mask`, `passage_input_ids`,
  `passage_attention_mask` ([local_batch, L]: [CLS] crop [SEP], padded to the longest row of
  the global batch rounded up to `pad_to_multiple_of`) and, for the host, `example_index`.
  """
  host_keys = frozenset({"example_index"})

  def __init__(self, streams: Sequence[np.ndarray], *, cls_id: int, sep_id: int, pad_id: int,
               settings: CropSettings, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, pad_to_multiple_of: int = 16):
    """Checks the arguments.

    Args:
      streams: Token streams (`text_sources.token_streams`), one per source.
      cls_id: Put before each crop.
      sep_id: Put after each crop.
      pad_id: Padding.
      settings: The cropping.
      global_batch: Examples per step over all processes (`train.batch_size`).
      seed: The run's seed, >= 0.
      process_index: This process.
      process_count: Processes sharing the global batch.
      pad_to_multiple_of: Padded widths are multiples of this (few compiled shapes).

    Raises:
      ValueError: An invalid argument, naming its config key.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                       f"{process_count}")
    if global_batch < 1 or global_batch % process_count:
      raise ValueError(f"train.batch_size ({global_batch}) must be a positive multiple of the "
                       f"number of processes ({process_count})")
    if seed < 0:
      raise ValueError(f"seed must be non-negative, got {seed}")
    if pad_to_multiple_of < 1:
      raise ValueError(f"train.pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
    if not streams:
      raise ValueError("no token streams to crop")
    self.streams = [np.asarray(s, np.int32) for s in streams]
    self.settings = settings
    length = settings.chunk_length
    # Chunks at offset 0: the epoch's nominal size (an offset may cut one chunk less).
    self.chunks = np.asarray([num_chunks(len(s), length) for s in self.streams], np.int64)
    if (self.chunks < 2).any():
      small = int(np.argmin(self.chunks))
      raise ValueError(f"source {small} has {len(self.streams[small])} tokens: fewer than two "
                       f"chunks of data.crop.chunk_length={length}")
    if settings.sample == "permutation" and len(self.streams) != 1:
      raise ValueError("data.crop.sample='permutation' needs one source; mixing sources "
                       "samples with replacement")
    total = int(self.chunks.sum())
    if global_batch > total - len(self.streams):
      raise ValueError(f"train.batch_size ({global_batch}) exceeds the chunks per epoch "
                       f"({total - len(self.streams)})")
    weights = self.chunks.astype(np.float64) ** settings.sampling_coefficient
    self.source_probabilities = weights / weights.sum()
    self.cls_id, self.sep_id, self.pad_id = int(cls_id), int(sep_id), int(pad_id)
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.pad_to_multiple_of = pad_to_multiple_of
    # Every offset may leave one chunk less than offset 0: the epoch's chunks are drawn among
    # those every offset has, so an epoch's size does not depend on its offset.
    self._usable = self.chunks - 1
    self._cached_order: tuple[int, np.ndarray] | None = None  # (epoch, permutation)
    self._steps_per_epoch = int(self._usable.sum()) // global_batch

  @property
  def steps_per_epoch(self) -> int:
    return self._steps_per_epoch

  def _epoch_of(self, example: int) -> int:
    return example // (self._steps_per_epoch * self.global_batch)

  def draw(self, example: int) -> ExampleDraw:
    """The draws of global example `example` (any process computes any example's)."""
    rng = np.random.default_rng([self.seed, example, _EXAMPLE_STREAM])
    settings = self.settings
    if settings.sample == "permutation":
      epoch = self._epoch_of(example)
      per_epoch = self._steps_per_epoch * self.global_batch
      order = self._order(epoch)
      source, chunk = 0, int(order[example - epoch * per_epoch])
    else:
      source = int(rng.choice(len(self.streams), p=self.source_probabilities))
      chunk = int(rng.integers(self._usable[source]))
    query = draw_crop(rng, settings.chunk_length, settings)
    key = draw_crop(rng, settings.chunk_length, settings)
    return ExampleDraw(source, chunk, query, key)

  def _order(self, epoch: int) -> np.ndarray:
    cached = self._cached_order
    if cached is None or cached[0] != epoch:
      order = np.random.default_rng([self.seed, epoch, _ORDER_STREAM]).permutation(
          int(self._usable[0]))
      self._cached_order = cached = (epoch, order)
    return cached[1]

  def chunk(self, example: int, draw: ExampleDraw) -> np.ndarray:
    """The tokens of the chunk `draw` names, in the epoch of `example`."""
    length = self.settings.chunk_length
    offset = epoch_offset(self.seed, self._epoch_of(example), draw.source, length)
    start = offset + draw.chunk * length
    return self.streams[draw.source][start:start + length]

  def pair(self, example: int) -> tuple[list[int], list[int]]:
    """(query ids, key ids) of one example, [CLS] and [SEP] included."""
    draw = self.draw(example)
    chunk = self.chunk(example, draw)
    wrap = lambda crop: [self.cls_id, *crop.apply(chunk).tolist(), self.sep_id]
    return wrap(draw.query), wrap(draw.key)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    first = step * self.global_batch
    draws = [self.draw(first + row) for row in range(self.global_batch)]
    longest = max(max(d.query.kept, d.key.kept) for d in draws) + 2
    width = tok.padded_length(longest, self.pad_to_multiple_of, self.settings.max_crop + 2)
    start = self.process_index * self.local_batch
    rows = range(start, start + self.local_batch)
    out = {}
    for side in ("query", "passage"):
      out[f"{side}_input_ids"] = np.full((self.local_batch, width), self.pad_id, np.int32)
      out[f"{side}_attention_mask"] = np.zeros((self.local_batch, width), np.int32)
    for i, row in enumerate(rows):
      draw = draws[row]
      chunk = self.chunk(first + row, draw)
      for side, crop in (("query", draw.query), ("passage", draw.key)):
        ids = [self.cls_id, *crop.apply(chunk).tolist(), self.sep_id]
        out[f"{side}_input_ids"][i, :len(ids)] = ids
        out[f"{side}_attention_mask"][i, :len(ids)] = 1
    out["example_index"] = np.arange(first + start, first + start + self.local_batch)
    return out

  def position(self, step: int) -> dict[str, int]:
    """The data position after `step` steps (JSON, saved in checkpoints)."""
    epoch, in_epoch = divmod(int(step), self._steps_per_epoch)
    return {"step": int(step), "epoch": epoch, "batch_in_epoch": in_epoch,
            "examples_seen": int(step) * self.global_batch,
            "num_chunks": int(self.chunks.sum())}

  def check_position(self, position: Mapping[str, int]) -> None:
    """Raises ValueError when a restored position is not where this batcher would be."""
    pairs.check_position_fields(
        position, self.position, POSITION_FIELDS,
        lambda expected: (f"(train.batch_size {self.global_batch}, {expected['num_chunks']} "
                          f"chunks); did the batch size, the data or data.crop change?"))

  def iterate(self, start_step: int, end_step: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(step, batch) for step in [start_step, end_step), the next batch built in a thread."""
    return pairs.prefetched_batches(self.batch, start_step, end_step, "crop_batches")
