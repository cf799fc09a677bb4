"""The STS Benchmark (Cer et al., 2017): sentence pairs with a gold similarity score in [0, 5].

The official release's files, one per split (`sts-train.csv`, `sts-dev.csv`, `sts-test.csv`),
are UTF-8 and tab-separated, one pair per line:

  genre  filename  year  id  score  sentence1  sentence2  [license fields...]

Some lines carry extra license columns after the sentences; they are ignored. Sentences hold
quote characters, so a line is cut on tabs only (no CSV quoting: `csv` would join lines).

A source names the files: a directory, or a data set name (`stsb`) found like every data set
(`paths.find_dataset`: `$RETRIEVAL_JAX_DATA`, then `../shared/data`), or `tfds:<directory or
name>` for the same files through their TFDS builder (`stsb_tfds`, prepared once as
array_record). Both give equal `StsPairs`. `synthetic` makes small pairs in memory (smoke runs
and tests with no files). No JAX.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Iterator

import numpy as np

from retrieval_jax import files
from retrieval_jax.data import paths

DEFAULT_SOURCE = "stsb"
SYNTHETIC = "synthetic"
_WORDS = ("cat dog man woman child car train boat plane guitar piano ball field river city "
          "house road tree snow rain plays runs rides eats sits jumps reads sings walks "
          "drives red big small old young happy fast slow").split()
SPLITS = ("train", "dev", "test")
TFDS_SCHEME = "tfds:"
# genre, filename, year, id, score, sentence1, sentence2; license fields may follow.
MIN_FIELDS = 7
GENRE, SCORE, SENTENCE1, SENTENCE2 = 0, 4, 5, 6  # field indices


def split_file_name(split: str) -> str:
  """The official file name of a split (`sts-dev.csv`)."""
  return f"sts-{split}.csv"


@dataclasses.dataclass(frozen=True)
class StsPairs:
  """The pairs of one split, in file order.

  Attributes:
    sentence1: The first sentence of each pair, verbatim.
    sentence2: The second sentence of each pair, verbatim.
    scores: [n] float64 gold similarity scores as written in the file.
    genres: Each pair's genre (`main-captions`, `main-forum`, `main-news`).
    source: The file the pairs were read from (for messages).
  """
  sentence1: list[str]
  sentence2: list[str]
  scores: np.ndarray
  genres: list[str]
  source: str = ""

  def __len__(self) -> int:
    return len(self.sentence1)

  def __eq__(self, other) -> bool:
    # A dataclass compares arrays with `==`, whose truth value is ambiguous: compare exactly.
    if not isinstance(other, StsPairs):
      return NotImplemented
    return (self.sentence1 == other.sentence1 and self.sentence2 == other.sentence2
            and self.genres == other.genres and np.array_equal(self.scores, other.scores))


def sentences(pairs: StsPairs) -> list[str]:
  """Every sentence in file order, row by row (sentence1, then sentence2), duplicates kept.

  The unlabelled text SG-OPT trains on: duplicates stay so the sentences keep the frequencies
  of the file.
  """
  return [s for pair in zip(pairs.sentence1, pairs.sentence2) for s in pair]


def parse_line(line: str, source: str, number: int) -> list[str]:
  """The tab-separated fields of one line (without its line break), checked.

  Raises:
    ValueError: Fewer than `MIN_FIELDS` fields, or a score that is not a finite number, naming
      `source` and the 1-based line `number`.
  """
  fields = line.split("\t")
  if len(fields) < MIN_FIELDS:
    raise ValueError(f"{source}:{number}: {len(fields)} tab-separated fields, expected at least "
                     f"{MIN_FIELDS} (genre, filename, year, id, score, sentence1, sentence2)")
  try:
    score = float(fields[SCORE])
  except ValueError:
    score = math.nan
  if not math.isfinite(score):
    raise ValueError(f"{source}:{number}: score {fields[SCORE]!r} (field 5) is not a number")
  return fields


def iter_lines(text: str, source: str = "") -> Iterator[tuple[int, list[str]]]:
  """(1-based line number, checked fields) of every line of a file's text."""
  # Line breaks are `\n` (or `\r\n`) only: `str.splitlines` would also cut at the Unicode
  # separators a sentence may hold.
  for number, line in enumerate(io.StringIO(text, newline="\n"), start=1):
    yield number, parse_line(line.rstrip("\r\n"), source, number)


def parse_text(text: str, source: str = "") -> StsPairs:
  """The pairs of a whole file's text (see `parse_line` for the errors)."""
  rows = [fields for _, fields in iter_lines(text, source)]
  return StsPairs(sentence1=[f[SENTENCE1] for f in rows], sentence2=[f[SENTENCE2] for f in rows],
                  scores=np.asarray([float(f[SCORE]) for f in rows], np.float64),
                  genres=[f[GENRE] for f in rows], source=source)


def read_text(path: str | os.PathLike) -> str:
  """The UTF-8 text of one STS-B file, local or remote.

  Raises:
    FileNotFoundError: No such file.
    ValueError: Bytes that are not UTF-8, naming the file.
  """
  found = files.as_path(path)
  if not found.is_file():
    raise FileNotFoundError(f"STS-B file {path} does not exist")
  try:
    return found.read_bytes().decode("utf-8")
  except UnicodeDecodeError as error:
    raise ValueError(f"{path}: not UTF-8 text ({error})") from None


def read_pairs(path: str | os.PathLike) -> StsPairs:
  """The pairs of one STS-B file, local or remote.

  Raises:
    FileNotFoundError: No such file.
    ValueError: A malformed line, naming the file and line, or a file that is not UTF-8.
  """
  return parse_text(read_text(path), os.fspath(path))


def find_directory(source: str | os.PathLike | None = None) -> paths.AnyPath:
  """The STS-B directory `source` names (None: `stsb`, found like every data set).

  Raises:
    FileNotFoundError: Naming what was looked for and where.
  """
  name = os.fspath(source or DEFAULT_SOURCE)
  root = paths.find_dataset(name)
  if root is None:
    roots = ", ".join(str(r) for r in paths.search_roots())
    raise FileNotFoundError(f"STS-B data {name!r} is not a directory, here or under {roots}")
  return root


def split_files(root: paths.AnyPath) -> dict[str, paths.AnyPath]:
  """The split files a directory holds, by split, in `SPLITS` order."""
  return {split: root / split_file_name(split) for split in SPLITS
          if (root / split_file_name(split)).is_file()}


def check_split(split: str) -> None:
  """Raises ValueError when `split` is not one of `SPLITS`."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {SPLITS}")


def split_file(source: str | os.PathLike | None, split: str) -> paths.AnyPath:
  """The file of `split` in the directory `source` names.

  Raises:
    ValueError: An unknown split.
    FileNotFoundError: No such directory, or no file for the split (naming the path and the
      splits the directory has).
  """
  check_split(split)
  root = find_directory(source)
  path = root / split_file_name(split)
  if not path.is_file():
    present = ", ".join(split_files(root)) or "none"
    raise FileNotFoundError(f"{path} does not exist: no {split!r} split in {root} (splits "
                            f"there: {present})")
  return path


def load_pairs(source: str | os.PathLike | None = None, split: str = "dev", *,
               tfds_dir: str | os.PathLike | None = None) -> StsPairs:
  """The pairs of `split` of a source (module docstring): files read directly, or through the
  TFDS builder when `source` is `tfds:<directory or name>` (prepared under `tfds_dir`).

  Raises:
    ValueError: An unknown split, a malformed line, or a remote `tfds_dir`.
    FileNotFoundError: No such directory or split file.
  """
  name = os.fspath(source or DEFAULT_SOURCE)
  if name == SYNTHETIC:
    check_split(split)
    return synthetic_pairs(SPLITS.index(split))
  if name.startswith(TFDS_SCHEME):
    # Imported here: TFDS is slow to import and most readers never need it.
    from retrieval_jax.data import stsb_tfds  # pylint: disable=g-import-not-at-top
    return stsb_tfds.load_pairs_tfds(name[len(TFDS_SCHEME):] or DEFAULT_SOURCE, split,
                                     data_dir=tfds_dir)
  return read_pairs(split_file(name, split))


def synthetic_pairs(seed: int, num_pairs: int = 64) -> StsPairs:
  """Pairs of random short sentences over a small vocabulary, scored 5 × the Jaccard overlap
  of their words: a similarity that bag-of-words models can learn, so smoke runs move."""
  rng = np.random.default_rng([seed, 17])
  left, right, scores = [], [], []
  for _ in range(num_pairs):
    words = list(rng.choice(_WORDS, size=rng.integers(3, 8), replace=False))
    kept = [w for w in words if rng.random() < rng.random()]
    other = kept + list(rng.choice(_WORDS, size=rng.integers(1, 5), replace=False))
    left.append(" ".join(words))
    right.append(" ".join(other))
    union = set(words) | set(other)
    scores.append(5.0 * len(set(words) & set(other)) / len(union))
  return StsPairs(left, right, np.asarray(scores, np.float64), ["synthetic"] * num_pairs,
                  SYNTHETIC)
