"""Strict readers of BEIR-layout files: the one place a BEIR file is parsed and validated.

A BEIR directory holds `corpus.jsonl` or `corpus.jsonl.gz` (`{"_id", "title", "text", ...}` per
line), `queries.jsonl` (`{"_id", "text", ...}`) and `qrels/<split>.tsv` (a `query-id corpus-id
score` header, then tab-separated rows with an integer score).

The readers are strict on purpose: BEIR's own loader skips the first qrels line and bad rows without
a word, and a silently shrunk qrels file changes every metric. Any problem raises `DataError` naming
the file and the 1-based line. Blank lines are the one thing skipped: they hold no data.

Both loading paths use these readers: `beir.read_raw` (`use_tfds=False`) and the TFDS builder's
example generators (`beir_tfds`), so the two give identical data and identical errors. This module
imports neither of them, so `beir` and `beir_tfds` both import it at top level without a circle.
Everything here is re-exported by `beir`, the public entry point.

Paths may be remote (`gs://...`, as `epath.Path`, see `paths.user_path`): files are read through
`path.open`, and messages name the remote path as given.
"""

import contextlib
import dataclasses
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from typing import IO

import tqdm

from retrieval_jax.data import paths

QRELS_HEADER = ("query-id", "corpus-id", "score")
# Seconds before a progress bar appears, so only slow reads (large corpora) show one.
_PROGRESS_DELAY = 2.0
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class DataError(ValueError):
  """A data file is missing or malformed; the message names the file and, for content, the line."""


def _error(path: os.PathLike | str, line: int, message: str) -> DataError:
  return DataError(f"{path}, line {line}: {message}")


@dataclasses.dataclass(frozen=True)
class BeirFiles:
  """The files of one BEIR directory."""
  root: paths.AnyPath
  corpus: paths.AnyPath
  queries: paths.AnyPath
  qrels: dict[str, paths.AnyPath]  # split name -> qrels/<split>.tsv, sorted by name

  def to_json(self) -> dict:
    qrels = {name: str(path) for name, path in self.qrels.items()}
    return {"root": str(self.root), "corpus": str(self.corpus), "queries": str(self.queries),
            "qrels": qrels}

  @classmethod
  def from_json(cls, blob: dict) -> "BeirFiles":
    # `user_path`, not pathlib: pathlib would turn `gs://b/x` into `gs:/b/x`.
    qrels = {name: paths.user_path(path) for name, path in blob["qrels"].items()}
    return cls(paths.user_path(blob["root"]), paths.user_path(blob["corpus"]),
               paths.user_path(blob["queries"]), qrels)


def locate_files(root: os.PathLike | str) -> BeirFiles:
  """Finds the files of a local or remote BEIR directory; `DataError` names whatever is missing."""
  root = paths.user_path(root)
  if not root.is_dir():
    raise DataError(f"{root}: not a directory")
  plain, gz = root / "corpus.jsonl", root / "corpus.jsonl.gz"
  if plain.is_file() and gz.is_file():
    # Two corpora could differ; picking one silently would hide that.
    raise DataError(f"{plain} and {gz} both exist: keep only one corpus file")
  if not plain.is_file() and not gz.is_file():
    raise DataError(f"{plain}: file not found (nor {gz.name})")
  queries = root / "queries.jsonl"
  if not queries.is_file():
    raise DataError(f"{queries}: file not found")
  qrels_dir = root / "qrels"
  tsvs = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
  if not tsvs:
    raise DataError(f"{qrels_dir}: no qrels files (expected qrels/<split>.tsv)")
  for tsv in tsvs:
    if not _SPLIT_NAME.match(tsv.stem):
      raise DataError(f"{tsv}: unsupported split name {tsv.stem!r} (use letters, digits, _ and -)")
    if tsv.stem == "train_minus_dev":  # `dev.tsv` is fine: it replaces the carved dev split.
      raise DataError(f"{tsv}: {tsv.stem!r} is reserved for a split derived from qrels/train.tsv")
  corpus = plain if plain.is_file() else gz
  return BeirFiles(root, corpus, queries, {tsv.stem: tsv for tsv in tsvs})


@contextlib.contextmanager
def _open_bytes(path: paths.AnyPath) -> Iterator[IO[bytes]]:
  """`path` opened for reading lines of bytes, decompressed when named *.gz."""
  with path.open("rb") as f:
    if path.suffix == ".gz":
      with gzip.GzipFile(fileobj=f, mode="rb") as unzipped:
        yield unzipped
    elif isinstance(f, io.BufferedIOBase) or not hasattr(f, "readinto"):
      yield f  # A local file, or TensorFlow's GFile (epath's gs:// with TF installed): buffered.
    else:
      # fsspec's files (epath's gs:// without TF) find each line by reading a whole block and
      # seeking back; a buffer reads each block once.
      with io.BufferedReader(f) as buffered:
        yield buffered


def _lines(path: paths.AnyPath) -> Iterator[tuple[int, bytes]]:
  """Yields (1-based line number, raw line) of a text file, gzip-compressed when named *.gz."""
  number = 0
  try:
    with _open_bytes(path) as f:
      progress = tqdm.tqdm(f, desc=path.name, unit=" lines", delay=_PROGRESS_DELAY)
      for number, line in enumerate(progress, 1):
        yield number, line
  except FileNotFoundError as e:
    raise DataError(f"{path}: file not found") from e
  except (OSError, EOFError) as e:  # A truncated or corrupt gzip stream.
    raise _error(path, number + 1, f"cannot read: {e}") from e


def _no_rows(path: paths.AnyPath, last_line: int, what: str) -> DataError:
  return _error(path, last_line + 1, f"end of file with no {what}: the file is empty")


def iter_jsonl(path: os.PathLike | str, what: str = "records") -> Iterator[tuple[int, dict]]:
  """Yields (line number, object) per non-blank line; raises `DataError` when there is none."""
  path = paths.user_path(path)
  last, count = 0, 0
  for last, raw in _lines(path):
    if not raw.strip():
      continue
    count += 1
    try:
      record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise _error(path, last, f"invalid JSON: {e}") from e
    if not isinstance(record, dict):
      raise _error(path, last, f"expected a JSON object, got {type(record).__name__}")
    yield last, record
  if not count:
    raise _no_rows(path, last, what)


def field(path: paths.AnyPath, line: int, record: dict, key: str, *, required: bool) -> str:
  """A string field of a JSON record; missing optional fields and nulls are ""."""
  if key not in record or (record[key] is None and not required):
    if required:
      raise _error(path, line, f"missing field {key!r}")
    return ""
  value = record[key]
  if not isinstance(value, str):
    kind = type(value).__name__
    raise _error(path, line, f"field {key!r} must be a string, got {kind}: {value!r:.60}")
  return value


def _check_id(path: paths.AnyPath, line: int, doc_id: str, seen: dict[str, int]) -> None:
  if not doc_id:
    raise _error(path, line, "empty '_id'")
  if doc_id in seen:
    raise _error(path, line, f"duplicate _id {doc_id!r}, first defined on line {seen[doc_id]}")
  seen[doc_id] = line


def iter_corpus(path: os.PathLike | str) -> Iterator[tuple[int, str, str, str]]:
  """Yields (line, id, title, text) of a BEIR corpus, validated; a missing or null title is ""."""
  path = paths.user_path(path)
  seen: dict[str, int] = {}
  for line, record in iter_jsonl(path, "documents"):
    doc_id = field(path, line, record, "_id", required=True)
    _check_id(path, line, doc_id, seen)
    title = field(path, line, record, "title", required=False)
    yield line, doc_id, title, field(path, line, record, "text", required=True)


def iter_queries(path: os.PathLike | str) -> Iterator[tuple[int, str, str]]:
  """Yields (line, id, text) of a BEIR queries file, validated."""
  path = paths.user_path(path)
  seen: dict[str, int] = {}
  for line, record in iter_jsonl(path, "queries"):
    query_id = field(path, line, record, "_id", required=True)
    _check_id(path, line, query_id, seen)
    yield line, query_id, field(path, line, record, "text", required=True)


@dataclasses.dataclass(frozen=True)
class QrelRow:
  """One judged (query, document) pair and its qrels line (for error messages)."""
  line: int
  query_id: str
  corpus_id: str
  score: int


def iter_qrels(path: os.PathLike | str) -> Iterator[QrelRow]:
  """Yields the validated rows of a `qrels/<split>.tsv` file; the header line is required."""
  path = paths.user_path(path)
  header = "/".join(QRELS_HEADER)
  seen: dict[tuple[str, str], int] = {}
  last = 0
  for last, raw in _lines(path):
    try:
      # BEIR ships qrels with CRLF line ends; some editors add a byte-order mark.
      text = raw.decode("utf-8-sig" if last == 1 else "utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
      raise _error(path, last, f"not valid UTF-8: {e}") from e
    if last == 1:
      if tuple(col.strip() for col in text.split("\t")) != QRELS_HEADER:
        raise _error(path, 1, f"expected the tab-separated header {header}, got {text!r:.80}")
      continue
    if not text.strip():
      continue
    cols = [col.strip() for col in text.split("\t")]
    if len(cols) != 3:
      raise _error(path, last, f"expected 3 tab-separated columns, got {len(cols)}: {text!r:.80}")
    query_id, corpus_id, score = cols
    if not query_id or not corpus_id:
      raise _error(path, last, f"empty query-id or corpus-id: {text!r:.80}")
    try:
      value = int(score)
    except ValueError as e:
      raise _error(path, last, f"score must be an integer, got {score!r}") from e
    if (query_id, corpus_id) in seen:
      first = seen[query_id, corpus_id]
      pair = f"({query_id!r}, {corpus_id!r})"
      raise _error(path, last, f"duplicate pair {pair}, first on line {first}")
    seen[query_id, corpus_id] = last
    yield QrelRow(last, query_id, corpus_id, value)
  if not last:
    raise _error(path, 1, f"the file is empty: expected the header {header}, then rows")
  if not seen:
    raise _no_rows(path, last, "qrels rows after the header")


@dataclasses.dataclass(frozen=True)
class RawBeir:
  """A whole BEIR directory, each file validated line by line, not yet cross-checked nor split."""
  files: BeirFiles
  corpus_ids: list[str]
  corpus_titles: list[str]
  corpus_texts: list[str]
  query_ids: list[str]
  query_texts: list[str]
  qrels: dict[str, list[QrelRow]]  # split name -> rows in file order


def read_raw(files: BeirFiles) -> RawBeir:
  """Reads a BEIR directory straight from its files (the `use_tfds=False` path)."""
  raw = RawBeir(files, [], [], [], [], [], {})
  for _, doc_id, title, text in iter_corpus(files.corpus):
    raw.corpus_ids.append(doc_id)
    raw.corpus_titles.append(title)
    raw.corpus_texts.append(text)
  for _, query_id, text in iter_queries(files.queries):
    raw.query_ids.append(query_id)
    raw.query_texts.append(text)
  raw.qrels.update((name, list(iter_qrels(path))) for name, path in files.qrels.items())
  return raw
