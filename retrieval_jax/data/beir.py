"""BEIR-layout data sets: the dev split, `BeirData` and `load_beir`.

The strict file readers live in `beir_readers` (shared with the TFDS builder in `beir_tfds`) and are
re-exported here, so `beir.DataError`, `beir.iter_qrels`, `beir.read_raw`, ... stay the public names.
Any problem with a file raises `DataError` naming the file and the 1-based line.

`beir_tfds` is imported only inside `load_beir`, for cost, not for a circle (it imports
`beir_readers`, never this module): importing TFDS is several times heavier than this module
(WORKSPACE), and most users of `BeirData` (synthetic data, pairs, mining) never touch TFDS.
"""

import dataclasses
import hashlib
import os
from collections.abc import Iterable

import numpy as np

from retrieval_jax.data import paths
# Re-exported: tests, eval/ and the recipes import these names from this module.
from retrieval_jax.data.beir_readers import (  # pylint: disable=unused-import
    QRELS_HEADER, BeirFiles, DataError, QrelRow, RawBeir, _error, iter_corpus, iter_jsonl,
    iter_qrels, iter_queries, locate_files, read_raw)

DEV_SALT = "retrieval_jax-dev"
# Splits that `load_beir` derives from `qrels/train.tsv` rather than reading a file of that name.
DERIVED_SPLITS = ("dev", "train_minus_dev")


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


def _check_refs(rows: list[QrelRow], path: paths.AnyPath, raw: RawBeir, corpus: set[str],
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

  def positive_rows(self) -> list[np.ndarray]:
    """Per query of `query_ids`, the corpus rows judged relevant: relevance > 0.

    Matched by doc id, so a doc id appearing on several corpus rows gives all of them (the readers
    reject duplicate ids, in-memory data may have them). A judged-zero document is not a positive,
    nor is a judged id absent from the corpus. The one definition of a positive, shared by the
    training pairs (`pairs.pairs_from_beir`) and negative mining (`index.mining`).

    Returns:
      One sorted, unique int64 array per query (empty for a query with no positive).
    """
    rows_of_id: dict[str, list[int]] = {}
    for row, doc_id in enumerate(self.corpus_ids):
      rows_of_id.setdefault(doc_id, []).append(row)
    result = []
    for query_id in self.query_ids:
      judged = self.qrels.get(query_id, {})
      rows = [r for doc_id, rel in judged.items() if rel > 0 for r in rows_of_id.get(doc_id, [])]
      result.append(np.unique(np.asarray(rows, np.int64)))
    return result


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
    source: a BEIR directory, local or remote (`gs://bucket/beir/scifact`), or a data set name
      looked up by `paths.find_dataset` (`scifact`); a known BEIR name with no local copy is
      downloaded through TFDS.
    split: a `qrels/<split>.tsv` name (`train`, `test`, ...), or `dev` or `train_minus_dev` (see
      `split_rows`).
    dev_fraction: share of the train queries carved out as dev when there is no `qrels/dev.tsv`.
    data_dir: where TFDS keeps prepared data, local or remote; default `$RETRIEVAL_JAX_TFDS_DIR`,
      else `~/tensorflow_datasets`.
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
    # Imported here, not at the top: TFDS is slow to import (see the module docstring).
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
  return build_data(raw, paths.resolved(root).name, split, dev_fraction)
