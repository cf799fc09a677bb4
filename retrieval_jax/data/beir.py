"""BEIR-layout data sets: strict readers, the dev split, and `load_beir`.

A BEIR directory holds `corpus.jsonl` or `corpus.jsonl.gz` (`{"_id", "title", "text", ...}` per
line), `queries.jsonl` (`{"_id", "text", ...}`) and `qrels/<split>.tsv` (a `query-id corpus-id
score` header, then tab-separated rows with an integer score).

The readers are strict on purpose: BEIR's own loader skips the first qrels line and bad rows without
a word, and a silently shrunk qrels file changes every metric. Any problem raises `DataError` naming
the file and the 1-based line. Blank lines are the one thing skipped: they hold no data.

The same readers run in both loading paths, directly (`use_tfds=False`) and inside the TFDS
builder's example generators (`beir_tfds`), so the two give identical data and identical errors.
"""

import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Iterable, Iterator

import tqdm

from retrieval_jax.data import paths

QRELS_HEADER = ("query-id", "corpus-id", "score")
DEV_SALT = "retrieval_jax-dev"
# Splits that `load_beir` derives from `qrels/train.tsv` rather than reading a file of that name.
DERIVED_SPLITS = ("dev", "train_minus_dev")
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
  root: pathlib.Path
  corpus: pathlib.Path
  queries: pathlib.Path
  qrels: dict[str, pathlib.Path]  # split name -> qrels/<split>.tsv, sorted by name

  def to_json(self) -> dict:
    qrels = {name: str(path) for name, path in self.qrels.items()}
    return {"root": str(self.root), "corpus": str(self.corpus), "queries": str(self.queries),
            "qrels": qrels}

  @classmethod
  def from_json(cls, blob: dict) -> "BeirFiles":
    qrels = {name: pathlib.Path(path) for name, path in blob["qrels"].items()}
    return cls(pathlib.Path(blob["root"]), pathlib.Path(blob["corpus"]),
               pathlib.Path(blob["queries"]), qrels)


def locate_files(root: os.PathLike | str) -> BeirFiles:
  """Finds the files of a BEIR directory, raising `DataError` naming whatever is missing."""
  root = pathlib.Path(root)
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


def _lines(path: pathlib.Path) -> Iterator[tuple[int, bytes]]:
  """Yields (1-based line number, raw line) of a text file, gzip-compressed when named *.gz."""
  opener = gzip.open if path.suffix == ".gz" else open
  number = 0
  try:
    with opener(path, "rb") as f:
      progress = tqdm.tqdm(f, desc=path.name, unit=" lines", delay=_PROGRESS_DELAY)
      for number, line in enumerate(progress, 1):
        yield number, line
  except FileNotFoundError as e:
    raise DataError(f"{path}: file not found") from e
  except (OSError, EOFError) as e:  # A truncated or corrupt gzip stream.
    raise _error(path, number + 1, f"cannot read: {e}") from e


def _no_rows(path: pathlib.Path, last_line: int, what: str) -> DataError:
  return _error(path, last_line + 1, f"end of file with no {what}: the file is empty")


def iter_jsonl(path: os.PathLike | str, what: str = "records") -> Iterator[tuple[int, dict]]:
  """Yields (line number, object) per non-blank line; raises `DataError` when there is none."""
  path = pathlib.Path(path)
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


def _field(path: pathlib.Path, line: int, record: dict, key: str, *, required: bool) -> str:
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


def _check_id(path: pathlib.Path, line: int, doc_id: str, seen: dict[str, int]) -> None:
  if not doc_id:
    raise _error(path, line, "empty '_id'")
  if doc_id in seen:
    raise _error(path, line, f"duplicate _id {doc_id!r}, first defined on line {seen[doc_id]}")
  seen[doc_id] = line


def iter_corpus(path: os.PathLike | str) -> Iterator[tuple[int, str, str, str]]:
  """Yields (line, id, title, text) of a BEIR corpus, validated; a missing or null title is ""."""
  path = pathlib.Path(path)
  seen: dict[str, int] = {}
  for line, record in iter_jsonl(path, "documents"):
    doc_id = _field(path, line, record, "_id", required=True)
    _check_id(path, line, doc_id, seen)
    title = _field(path, line, record, "title", required=False)
    yield line, doc_id, title, _field(path, line, record, "text", required=True)


def iter_queries(path: os.PathLike | str) -> Iterator[tuple[int, str, str]]:
  """Yields (line, id, text) of a BEIR queries file, validated."""
  path = pathlib.Path(path)
  seen: dict[str, int] = {}
  for line, record in iter_jsonl(path, "queries"):
    query_id = _field(path, line, record, "_id", required=True)
    _check_id(path, line, query_id, seen)
    yield line, query_id, _field(path, line, record, "text", required=True)


@dataclasses.dataclass(frozen=True)
class QrelRow:
  """One judged (query, document) pair and its qrels line (for error messages)."""
  line: int
  query_id: str
  corpus_id: str
  score: int


def iter_qrels(path: os.PathLike | str) -> Iterator[QrelRow]:
  """Yields the validated rows of a `qrels/<split>.tsv` file; the header line is required."""
  path = pathlib.Path(path)
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


def _check_fraction(fraction: float) -> None:
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"dev_fraction must be in (0, 1), got {fraction}")


def in_dev(query_id: str, fraction: float = 0.2, salt: str = DEV_SALT) -> bool:
  """Whether a train query belongs to the carved dev split.

  A hash of the id, not a random draw: the split is the same on every machine, in every process and
  for any order of the qrels file, and a query keeps its side when the train set grows.
  """
  digest = hashlib.sha256(f"{salt}:{query_id}".encode("utf-8")).hexdigest()
  return int(digest, 16) % 10_000 < fraction * 10_000


def carve_dev(query_ids: Iterable[str], fraction: float = 0.2, salt: str = DEV_SALT) -> set[str]:
  """The ids among `query_ids` that form the dev split (about `fraction` of them)."""
  _check_fraction(fraction)
  return {query_id for query_id in query_ids if in_dev(query_id, fraction, salt)}


def available_splits(files: BeirFiles) -> list[str]:
  """Splits `load_beir` accepts for a directory: its qrels files and those derived from train."""
  names = list(files.qrels)
  if "train" in files.qrels:
    names += [name for name in DERIVED_SPLITS if name not in files.qrels]
  return names


def check_split(files: BeirFiles, split: str) -> None:
  """Raises `DataError` listing the available splits when `split` is not one of them."""
  available = available_splits(files)
  if split not in available:
    raise DataError(f"unknown split {split!r} for {files.root}; available: {', '.join(available)}")


def _check_refs(rows: list[QrelRow], path: pathlib.Path, raw: RawBeir, corpus: set[str],
                queries: set[str]) -> None:
  """Every qrels row must name a known query and document: evaluation would skip it silently."""
  for row in rows:
    if row.query_id not in queries:
      raise _error(path, row.line, f"query-id {row.query_id!r} is not in {raw.files.queries}")
    if row.corpus_id not in corpus:
      raise _error(path, row.line, f"corpus-id {row.corpus_id!r} is not in {raw.files.corpus}")


def split_rows(raw: RawBeir, split: str, dev_fraction: float = 0.2) -> list[QrelRow]:
  """The qrels rows of one split, after checking every row of the files it comes from.

  `dev` is `qrels/dev.tsv` when it exists, else carved from train by `in_dev`. `train_minus_dev` is
  train without the dev queries, whichever `dev` means, so training on it never sees a dev query.
  """
  check_split(raw.files, split)
  corpus, queries = set(raw.corpus_ids), set(raw.query_ids)
  if split in raw.files.qrels:
    sources = [split]
  else:
    sources = ["train", "dev"] if "dev" in raw.files.qrels else ["train"]
  for name in sources:
    _check_refs(raw.qrels[name], raw.files.qrels[name], raw, corpus, queries)
  if split in raw.files.qrels:
    return raw.qrels[split]
  train = raw.qrels["train"]
  if split == "dev":
    held_out = carve_dev((row.query_id for row in train), dev_fraction)
    rows = [row for row in train if row.query_id in held_out]
  else:
    if "dev" in raw.qrels:
      held_out = {row.query_id for row in raw.qrels["dev"]}
    else:
      held_out = carve_dev((row.query_id for row in train), dev_fraction)
    rows = [row for row in train if row.query_id not in held_out]
  if not rows:
    raise DataError(f"split {split!r} derived from {raw.files.qrels['train']} is empty "
                    f"(dev_fraction={dev_fraction}); the train qrels are too small to split")
  return rows


@dataclasses.dataclass(frozen=True)
class BeirData:
  """One split of a BEIR data set: the whole corpus, the split's queries and their judgements."""
  name: str
  corpus_ids: list[str]  # corpus order as in the file
  corpus_titles: list[str]
  corpus_texts: list[str]
  query_ids: list[str]  # only queries judged in this split's qrels, in queries.jsonl order
  query_texts: list[str]
  qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}

  def doc_strings(self) -> list[str]:
    """Documents as encoders see them: `f"{title} {text}".strip()`, as in BEIR and
    sentence-transformers."""
    pairs = zip(self.corpus_titles, self.corpus_texts)
    return [f"{title} {text}".strip() for title, text in pairs]


def build_data(raw: RawBeir, name: str, split: str, dev_fraction: float = 0.2) -> BeirData:
  """Cross-checks a raw directory and cuts one split out of it (sharing the corpus lists)."""
  judged: dict[str, dict[str, int]] = {}
  for row in split_rows(raw, split, dev_fraction):
    judged.setdefault(row.query_id, {})[row.corpus_id] = row.score
  keep = [i for i, query_id in enumerate(raw.query_ids) if query_id in judged]
  query_ids = [raw.query_ids[i] for i in keep]
  return BeirData(name=name, corpus_ids=raw.corpus_ids, corpus_titles=raw.corpus_titles,
                  corpus_texts=raw.corpus_texts, query_ids=query_ids,
                  query_texts=[raw.query_texts[i] for i in keep],
                  qrels={query_id: judged[query_id] for query_id in query_ids})


def load_beir(source: str | os.PathLike, split: str = "test", *, dev_fraction: float = 0.2,
              data_dir: str | None = None, use_tfds: bool = True) -> BeirData:
  """Loads one split of a BEIR data set.

  Args:
    source: a BEIR directory, or a data set name looked up by `paths.find_dataset` (`scifact`);
      a known BEIR name with no local copy is downloaded through TFDS.
    split: a `qrels/<split>.tsv` name (`train`, `test`, ...), or `dev` or `train_minus_dev` (see
      `split_rows`).
    dev_fraction: share of the train queries carved out as dev when there is no `qrels/dev.tsv`.
    data_dir: where TFDS keeps prepared data; default `$RETRIEVAL_JAX_TFDS_DIR`, else
      `~/tensorflow_datasets`.
    use_tfds: go through the TFDS builder (prepared once, then read back by random access); False
      reads the files directly. Both give the same `BeirData` and the same errors.

  Returns:
    The split's `BeirData`.

  Raises:
    DataError: a file is missing or malformed (the message names the file and line), or the split
      is unknown.
    ValueError: `dev_fraction` is not strictly between 0 and 1.
  """
  _check_fraction(dev_fraction)
  root = paths.find_dataset(source)
  if root is None:
    # Imported here because beir_tfds imports this module (and only the TFDS path needs TFDS).
    from retrieval_jax.data import beir_tfds  # pylint: disable=g-import-not-at-top
    name = os.fspath(source)
    if name not in beir_tfds.DOWNLOADABLE:
      roots = ", ".join(map(str, paths.search_roots()))
      raise DataError(f"data set {name!r} not found: not a directory, not under {roots}, and not "
                      f"a downloadable BEIR name ({', '.join(sorted(beir_tfds.DOWNLOADABLE))})")
    if not use_tfds:
      raise DataError(f"data set {name!r} has no local copy; use_tfds=True downloads it")
    raw = beir_tfds.read_prepared(beir_tfds.prepare_download(name, data_dir))
    return build_data(raw, name, split, dev_fraction)
  files = locate_files(root)
  check_split(files, split)  # Before the expensive part.
  if use_tfds:
    from retrieval_jax.data import beir_tfds  # pylint: disable=g-import-not-at-top
    raw = beir_tfds.read_prepared(beir_tfds.prepare_local(files, data_dir), files)
  else:
    raw = read_raw(files)
  return build_data(raw, root.resolve().name, split, dev_fraction)
