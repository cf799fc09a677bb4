"""A TFDS builder for STS-B files (`data.stsb`), written as array_record: no TensorFlow.

As `squad_tfds`: not registered by name (TFDS's own `glue/stsb` keeps it), one config per
directory, its name carrying a hash of the resolved file paths and their contents (an edited
file is prepared again, an unchanged one only reopened), the data dir from
`beir_tfds.check_data_dir` (`$RETRIEVAL_JAX_TFDS_DIR`, else `~/tensorflow_datasets`; local only).
The splits are the files the directory holds (`train`, `dev`, `test`); an example is one pair,
`{genre, score, sentence1, sentence2}`, in file order (`disable_shuffling`).

The score is stored as its text in the file: TFDS serialises float64 features as float32
(`3.8` would come back as 3.7999999523), and the pairs read back must equal the files'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from retrieval_jax.data import beir_tfds, paths, stsb

_READ_CHUNK = 4096  # Records fetched per random-access call when reading a split back.


@dataclasses.dataclass
class StsbConfig(tfds.core.BuilderConfig):
  """The STS-B files of one directory: split name -> file path (as strings)."""
  split_files: dict = dataclasses.field(default_factory=dict)


def source_config(source: str | os.PathLike | None = None) -> StsbConfig:
  """The config of a directory (`stsb.find_directory`); its name changes with any file.

  Raises:
    FileNotFoundError: No such directory, or one without any `sts-<split>.csv`.
  """
  root = stsb.find_directory(source)
  split_files = stsb.split_files(root)
  if not split_files:
    names = ", ".join(stsb.split_file_name(s) for s in stsb.SPLITS)
    raise FileNotFoundError(f"{root} holds none of the STS-B files ({names})")
  digest = hashlib.sha256()
  for split, path in split_files.items():
    digest.update(f"\0{split}\0{paths.resolved(path)}\0".encode("utf-8"))
    with path.open("rb") as f:
      digest.update(hashlib.file_digest(f, "sha256").digest())
  slug = re.sub(r"[^A-Za-z0-9_]+", "_", paths.resolved(root).name) or "stsb"
  return StsbConfig(name=f"{slug}-{digest.hexdigest()[:16]}",
                    split_files={split: str(path) for split, path in split_files.items()},
                    description=f"STS-B pairs of {root}")


class StsbBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """STS-B sentence pairs with their gold scores (module docstring)."""
  name = "retrieval_jax_stsb"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One example per pair, file order, the score as written."}

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text
    return tfds.core.DatasetInfo(
        builder=self, description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            "genre": text(), "score": text(), "sentence1": text(), "sentence2": text()}),
        homepage="https://ixa2.si.ehu.eus/stswiki/index.php/STSbenchmark",
        disable_shuffling=True)  # Example i stays pair i of the file.

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Local (or remote) files only: nothing is downloaded.
    return {split: self._generate_examples(path)
            for split, path in self.builder_config.split_files.items()}

  def _generate_examples(self, path: str):
    """Yields (line number, example); a bad line fails here, naming the file and line."""
    for number, fields in stsb.iter_lines(stsb.read_text(path), path):
      yield number, {"genre": fields[stsb.GENRE], "score": fields[stsb.SCORE],
                     "sentence1": fields[stsb.SENTENCE1], "sentence2": fields[stsb.SENTENCE2]}


def prepare(source: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None) -> StsbBuilder:
  """Prepares (once) the STS-B files of `source` in `data_dir`; returns the builder.

  Raises:
    ValueError: A remote `data_dir` (`beir_tfds.check_data_dir`), or a malformed line.
    FileNotFoundError: No STS-B directory or file at `source`.
  """
  data_dir = beir_tfds.check_data_dir(data_dir)
  return beir_tfds.prepare_builder(StsbBuilder(config=source_config(source), data_dir=data_dir,
                                               file_format="array_record"))


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_prepared(builder: StsbBuilder, split: str = "dev") -> stsb.StsPairs:
  """One prepared split back as `StsPairs` (equal to `stsb.read_pairs` of its file).

  Raises:
    FileNotFoundError: A split the builder does not have, naming the file and the splits it has.
  """
  split_files = builder.builder_config.split_files
  if split not in builder.info.splits:
    root = paths.user_path(next(iter(split_files.values()))).parent
    raise FileNotFoundError(f"{root / stsb.split_file_name(split)} does not exist: no "
                            f"{split!r} split in {root} (splits there: "
                            f"{', '.join(split_files)})")
  source = builder.as_data_source(split=split)
  records = []
  for start in range(0, len(source), _READ_CHUNK):
    records.extend(source.__getitems__(list(range(start, min(start + _READ_CHUNK,
                                                              len(source))))))
  return stsb.StsPairs(
      sentence1=[_text(r["sentence1"]) for r in records],
      sentence2=[_text(r["sentence2"]) for r in records],
      scores=np.asarray([float(_text(r["score"])) for r in records], np.float64),
      genres=[_text(r["genre"]) for r in records], source=split_files[split])


def load_pairs_tfds(source: str | os.PathLike | None = None, split: str = "dev",
                    data_dir: str | os.PathLike | None = None) -> stsb.StsPairs:
  """The pairs of `split` through the prepared TFDS data (equal to `stsb.load_pairs`)."""
  stsb.check_split(split)
  return read_prepared(prepare(source, data_dir), split)
