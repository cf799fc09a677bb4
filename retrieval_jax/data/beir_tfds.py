"""A TFDS builder for BEIR-layout data, written as array_record so that it needs no TensorFlow.

TFDS gives every split of a data set the same features, and the parts of a BEIR directory have
different ones, so one directory becomes three prepared TFDS data sets (builder configs), one per
part:

  * `corpus`: one split `corpus` of `{id, title, text}`;
  * `queries`: one split `queries` of `{id, text}`;
  * `qrels`: one split per `qrels/<name>.tsv` (`train`, `test`, ...) of
    `{query_id, corpus_id, score, line}`.

The qrels are stored as well, rather than re-read from TSV at load time, so that a prepared data set
is self-contained: a downloaded one does not depend on the extracted zip staying in the downloads
folder. `line` is each row's TSV line because one check can only run at load time (that every qrels
id exists in the corpus and the queries, which needs both whole) and its error must still name the
file and the line. All other checks run while the examples are generated, with the same readers as
`beir_readers.read_raw`, so both paths raise the same errors.

Examples keep the file order (`disable_shuffling`): index i of the corpus split is document i.

A config points either at a local directory (`source_dir`) or at a BEIR name to download
(`dataset`). A local config's name carries a hash of the resolved directory path and of the part's
file names and contents, so two directories, or one directory before and after an edit, never share
prepared data, while an unchanged directory is prepared once and then reused. Hashing reads the
files, far cheaper than preparing again. Stale versions stay in `data_dir`.

`source_dir` may be remote (`gs://...`): its files are read through epath (`paths.user_path`).
`data_dir` must be local: array_record, the format that spares us TensorFlow, opens its files with
the local file API, so TFDS cannot write or read them in a bucket (`check_data_dir`).
"""

import dataclasses
import hashlib
import os
import re
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from retrieval_jax.data import beir_readers as readers
from retrieval_jax.data import paths

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# BEIR data sets whose public zip is one BEIR directory. cqadupstack is left out: its zip holds
# twelve sub-forums, each its own BEIR directory (pass a sub-directory's path instead).
DOWNLOADABLE = frozenset({
    "arguana", "climate-fever", "dbpedia-entity", "fever", "fiqa", "hotpotqa", "msmarco",
    "nfcorpus", "nq", "quora", "scidocs", "scifact", "trec-covid", "webis-touche2020",
})
PARTS = ("corpus", "queries", "qrels")
_READ_CHUNK = 4096  # Records fetched per random-access call when reading a split back.


def beir_url(name: str) -> str:
  """The official download URL of a BEIR data set."""
  return BEIR_URL.format(name=name)


def _features(part: str) -> tfds.features.FeaturesDict:
  text = tfds.features.Text
  if part == "corpus":
    return tfds.features.FeaturesDict({"id": text(), "title": text(), "text": text()})
  if part == "queries":
    return tfds.features.FeaturesDict({"id": text(), "text": text()})
  return tfds.features.FeaturesDict(
      {"query_id": text(), "corpus_id": text(), "score": np.int64, "line": np.int64})


@dataclasses.dataclass
class BeirConfig(tfds.core.BuilderConfig):
  """One part of a BEIR data set: of the local `source_dir`, or else of `dataset` downloaded."""
  part: str = "corpus"
  source_dir: str = ""
  dataset: str = ""


def download_root(dl_manager: Any, dataset: str) -> paths.AnyPath:
  """Downloads and extracts a BEIR zip; the zip holds one folder named after the data set."""
  extracted = dl_manager.download_and_extract(beir_url(dataset))
  # Under `data_dir/downloads`, so remote when `data_dir` is.
  return paths.user_path(extracted) / dataset


class BeirBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One part of a BEIR data set (see the module docstring).

  Not registered with TFDS by name: a config is always made from a directory or a BEIR name, and
  TFDS's own `beir` builder (a Beam pipeline with other features) keeps its name.
  """
  name = "retrieval_jax_beir"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "corpus, queries and qrels parts, strictly validated, in file order."}

  # Downloads are checked against the sizes and SHA-256 sums TFDS records for the BEIR zips.
  @tfds.core.utils.classproperty
  @classmethod
  def _checksums_path(cls) -> epath.Path | None:
    path = epath.Path(tfds.core.utils.tfds_path()) / "datasets" / "beir" / "checksums.tsv"
    return path if path.exists() else None

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"BEIR {config.part} of {config.source_dir or beir_url(config.dataset)}",
        features=_features(config.part),
        homepage="https://github.com/beir-cellar/beir",
        disable_shuffling=True,  # Corpus index i must stay document i of the file.
        metadata=tfds.core.MetadataDict(),  # The source paths, for error messages at load time.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    if config.source_dir:
      root = paths.user_path(config.source_dir)
    else:
      root = download_root(dl_manager, config.dataset)
    files = readers.locate_files(root)
    self.info.metadata["files"] = files.to_json()
    if config.part == "corpus":
      return {"corpus": self._generate_examples("corpus", files.corpus)}
    if config.part == "queries":
      return {"queries": self._generate_examples("queries", files.queries)}
    return {name: self._generate_examples("qrels", path) for name, path in files.qrels.items()}

  def _generate_examples(self, part: str, path: paths.AnyPath):
    """Yields (line number, example); the readers raise `DataError` naming file and line."""
    if part == "corpus":
      for line, doc_id, title, text in readers.iter_corpus(path):
        yield line, {"id": doc_id, "title": title, "text": text}
    elif part == "queries":
      for line, query_id, text in readers.iter_queries(path):
        yield line, {"id": query_id, "text": text}
    else:
      for row in readers.iter_qrels(path):
        yield row.line, {"query_id": row.query_id, "corpus_id": row.corpus_id,
                         "score": row.score, "line": row.line}


def _digest(root: paths.AnyPath, part_files: list[paths.AnyPath]) -> str:
  """A hash of the resolved directory and of the part's file names and contents."""
  digest = hashlib.sha256(str(paths.resolved(root)).encode("utf-8"))
  for path in part_files:
    digest.update(f"\0{path.relative_to(root)}\0".encode("utf-8"))
    with path.open("rb") as f:
      digest.update(hashlib.file_digest(f, "sha256").digest())
  return digest.hexdigest()[:16]


def local_config(files: readers.BeirFiles, part: str) -> BeirConfig:
  """The config of one part of a local directory; its name changes when the part's files do."""
  part_files = {"corpus": [files.corpus], "queries": [files.queries],
                "qrels": list(files.qrels.values())}[part]
  slug = re.sub(r"[^A-Za-z0-9_]+", "_", paths.resolved(files.root).name) or "beir"
  return BeirConfig(name=f"{slug}-{_digest(files.root, part_files)}-{part}", part=part,
                    source_dir=str(files.root), description=f"BEIR {part} of {files.root}")


def download_config(dataset: str, part: str) -> BeirConfig:
  """The config of one part of an official BEIR zip."""
  return BeirConfig(name=f"{dataset}-download-{part}", part=part, dataset=dataset,
                    description=f"BEIR {part} of {beir_url(dataset)}")


def check_data_dir(data_dir: str | os.PathLike | None) -> str:
  """`data_dir`, or the default, as a string; `ValueError` when it is remote.

  Called before any work (hashing a remote source reads all of it): see the module docstring.
  """
  data_dir = os.fspath(data_dir or paths.default_tfds_dir())
  if paths.is_remote(data_dir):
    raise ValueError(
        f"TFDS data_dir {data_dir}: prepared data must be on a local disk, because array_record "
        "files are written and read with local file I/O; use a local data_dir (the BEIR "
        "directory itself may be remote) or use_tfds=False")
  return data_dir


def prepare_builder(builder: tfds.core.DatasetBuilder, **kwargs) -> tfds.core.DatasetBuilder:
  """`builder.download_and_prepare` without statistics (they would need TensorFlow, and
  nothing here reads them); a prepared builder only opens its files. Returns `builder`."""
  options = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
  builder.download_and_prepare(download_config=options, **kwargs)
  return builder


def _prepare(configs: dict[str, BeirConfig], data_dir: str) -> dict[str, BeirBuilder]:
  """Prepares each part unless it already is (then TFDS only opens the prepared files)."""
  return {part: prepare_builder(BeirBuilder(config=config, data_dir=data_dir,
                                            file_format="array_record"))
          for part, config in configs.items()}


def prepare_local(files: readers.BeirFiles,
                  data_dir: str | os.PathLike | None = None) -> dict[str, BeirBuilder]:
  """Prepares (once) the three parts of a BEIR directory; returns the builders by part."""
  data_dir = check_data_dir(data_dir)
  return _prepare({part: local_config(files, part) for part in PARTS}, data_dir)


def prepare_download(dataset: str,
                     data_dir: str | os.PathLike | None = None) -> dict[str, BeirBuilder]:
  """Downloads (once) and prepares the three parts of an official BEIR data set."""
  if dataset not in DOWNLOADABLE:
    known = ", ".join(sorted(DOWNLOADABLE))
    raise readers.DataError(f"{dataset!r} is not a downloadable BEIR data set: {known}")
  return _prepare({part: download_config(dataset, part) for part in PARTS},
                  check_data_dir(data_dir))


def _decode_value(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, (np.integer, int)):
    return int(value)
  return value


def _decode(record: dict) -> dict:
  return {k: _decode_value(v) for k, v in record.items()}


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
  """All records of one split in file order, fetched by index in chunks, strings decoded."""
  source = builder.as_data_source(split=split)
  records = []
  with tqdm.tqdm(total=len(source), desc=f"reading {split}", unit=" rows", delay=2.0) as bar:
    for start in range(0, len(source), _READ_CHUNK):
      chunk = source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source)))))
      records.extend(_decode(record) for record in chunk)
      bar.update(len(chunk))
  return records


def read_prepared(builders: dict[str, BeirBuilder],
                  files: readers.BeirFiles | None = None) -> readers.RawBeir:
  """Reads prepared parts back into a `readers.RawBeir`.

  Args:
    builders: the prepared builders by part, from `prepare_local` or `prepare_download`.
    files: the source files, named in error messages; by default the paths recorded when the data
      was prepared (for a download, inside the extracted zip).

  Returns:
    The whole data set, each file validated, not yet cross-checked nor split.
  """
  files = files or readers.BeirFiles.from_json(builders["corpus"].info.metadata["files"])
  raw = readers.RawBeir(files, [], [], [], [], [], {})
  for record in read_split(builders["corpus"], "corpus"):
    raw.corpus_ids.append(record["id"])
    raw.corpus_titles.append(record["title"])
    raw.corpus_texts.append(record["text"])
  for record in read_split(builders["queries"], "queries"):
    raw.query_ids.append(record["id"])
    raw.query_texts.append(record["text"])
  for name in files.qrels:
    raw.qrels[name] = [readers.QrelRow(r["line"], r["query_id"], r["corpus_id"], r["score"])
                       for r in read_split(builders["qrels"], name)]
  return raw
