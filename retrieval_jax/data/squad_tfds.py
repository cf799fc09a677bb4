"""A TFDS builder for SQuAD v1.1 JSON files, written as array_record so that it needs no TensorFlow.

One prepared data set per directory of SQuAD files, with a split per official file it holds
(`train` from `train-v1.1.json[.gz]`, `dev` from `dev-v1.1.json[.gz]`); a single `.json[.gz]`
file is one split, `dev` when its name starts with `dev`, else `train`. An example is one question:

  `{article, title, paragraph, context, id, question, answers: {text, answer_start}}`

with `article` the article's index and `paragraph` the paragraph's index in the file (counted over
all articles, from 0), in file order (`disable_shuffling`). That is enough to rebuild the ReQA data
(`load_reqa_tfds` equals `reqa.load_reqa`): a paragraph without questions adds no ReQA candidate,
so its text is not stored, but the number of paragraphs of each article and the titles are kept in
the data set's metadata, so article and paragraph numbers stay those of the file.

As in `beir_tfds`, a config's name carries a hash of the resolved source path and of the files'
names and contents: an edited file is prepared again, an unchanged one is only opened. `data_dir`
must be local (array_record uses local file I/O); the source may be remote (`gs://`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from retrieval_jax.data import beir_tfds, paths, reqa

_READ_CHUNK = 4096  # Records fetched per random-access call when reading a split back.


def squad_splits(source: str | os.PathLike) -> dict[str, paths.AnyPath]:
  """The SQuAD files of `source` by split (see the module docstring).

  Raises:
    FileNotFoundError: No such file or directory, or a directory without a train or dev file.
  """
  name = os.fspath(source)
  if name.endswith((".json", ".json.gz")):
    found = reqa.squad_file(name)
    return {"dev" if found.name.startswith("dev") else "train": found}
  found = {}
  for split in reqa.SPLIT_FILES:
    try:
      found[split] = reqa.squad_file(name, split)
    except FileNotFoundError as error:
      missing = error
  if not found:
    raise missing
  return found


@dataclasses.dataclass
class SquadConfig(tfds.core.BuilderConfig):
  """The SQuAD files of one source: split name -> file path (as strings)."""
  split_files: dict = dataclasses.field(default_factory=dict)


def source_config(source: str | os.PathLike) -> SquadConfig:
  """The config of a source; its name changes when any of its files does."""
  split_files = squad_splits(source)
  digest = hashlib.sha256()
  for split, path in sorted(split_files.items()):
    digest.update(f"\0{split}\0{paths.resolved(path)}\0".encode("utf-8"))
    with path.open("rb") as f:
      digest.update(hashlib.file_digest(f, "sha256").digest())
  first = next(iter(split_files.values()))
  slug = re.sub(r"[^A-Za-z0-9_]+", "_", paths.resolved(first).parent.name) or "squad"
  return SquadConfig(name=f"{slug}-{digest.hexdigest()[:16]}",
                     split_files={split: str(path) for split, path in split_files.items()},
                     description="SQuAD v1.1 questions of " + ", ".join(
                         sorted(str(path) for path in split_files.values())))


class SquadBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """SQuAD v1.1 questions with their paragraphs (see the module docstring).

  Not registered by name: TFDS's own `squad` builder keeps it, and a config is always made
  from files (`source_config`).
  """
  name = "retrieval_jax_squad"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One example per question, file order, article/paragraph numbers."}

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            "article": np.int64, "title": text(), "paragraph": np.int64, "context": text(),
            "id": text(), "question": text(),
            "answers": tfds.features.Sequence({"text": text(), "answer_start": np.int64}),
        }),
        homepage="https://rajpurkar.github.io/SQuAD-explorer/",
        disable_shuffling=True,  # Example order is the file's: articles, then paragraphs.
        # Per split: titles and paragraph counts by article (see the module docstring).
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Local (or remote) files only: nothing is downloaded.
    generators = {}
    for split, path in self.builder_config.split_files.items():
      squad = reqa.load_squad(path, split)
      # Checked here, so that a bad file fails while preparing, naming the file and key.
      reqa.ReqaData.from_squad(squad, source=path)
      self.info.metadata[split] = {
          "titles": [str(article.get("title", "")) for article in squad["data"]],
          "paragraphs": [len(article["paragraphs"]) for article in squad["data"]]}
      generators[split] = self._generate_examples(squad)
    return generators

  def _generate_examples(self, squad: dict):
    """Yields (running number, example), one per question, in file order."""
    key = 0
    paragraph_count = 0
    for a, article in enumerate(squad["data"]):
      for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
          yield key, {
              "article": a, "title": str(article.get("title", "")),
              "paragraph": paragraph_count, "context": paragraph["context"],
              "id": str(qa["id"]), "question": qa["question"],
              "answers": {"text": [str(x.get("text", "")) for x in qa["answers"]],
                          "answer_start": [int(x["answer_start"]) for x in qa["answers"]]}}
          key += 1
        paragraph_count += 1


def prepare(source: str | os.PathLike = "squad",
            data_dir: str | os.PathLike | None = None) -> SquadBuilder:
  """Prepares (once) the SQuAD files of `source`; returns the builder.

  Raises:
    ValueError: A remote `data_dir` (`beir_tfds.check_data_dir`), or a bad file.
    FileNotFoundError: No SQuAD file at `source`.
  """
  data_dir = beir_tfds.check_data_dir(data_dir)
  return beir_tfds.prepare_builder(SquadBuilder(config=source_config(source), data_dir=data_dir,
                                                file_format="array_record"))


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_squad(builder: SquadBuilder, split: str = "train") -> dict:
  """One prepared split back as a SQuAD-shaped dict (paragraphs without questions are empty).

  Raises:
    ValueError: A split the builder does not have.
  """
  if split not in builder.info.splits:
    raise ValueError(f"split={split!r} is not prepared from {builder.builder_config.split_files}; "
                     f"available: {sorted(builder.info.splits)}")
  layout = builder.info.metadata[split]
  articles = [{"title": title, "paragraphs": [{"context": "", "qas": []} for _ in range(count)]}
              for title, count in zip(layout["titles"], layout["paragraphs"])]
  # Global paragraph number -> (article, paragraph within it).
  where = [(a, p) for a, count in enumerate(layout["paragraphs"]) for p in range(count)]
  source = builder.as_data_source(split=split)
  for start in range(0, len(source), _READ_CHUNK):
    for record in source.__getitems__(list(range(start, min(start + _READ_CHUNK,
                                                             len(source))))):
      a, p = where[int(record["paragraph"])]
      paragraph = articles[a]["paragraphs"][p]
      paragraph["context"] = _text(record["context"])
      answers = record["answers"]
      paragraph["qas"].append({
          "id": _text(record["id"]), "question": _text(record["question"]),
          "answers": [{"text": _text(t), "answer_start": int(s)}
                      for t, s in zip(answers["text"], answers["answer_start"])]})
  return {"data": articles, "version": "1.1"}


def load_reqa_tfds(source: str | os.PathLike = "squad", split: str = "train",
                   data_dir: str | os.PathLike | None = None) -> reqa.ReqaData:
  """`reqa.ReqaData` of one split through the prepared TFDS data (equal to `reqa.load_reqa`)."""
  builder = prepare(source, data_dir)
  return reqa.ReqaData.from_squad(read_squad(builder, split),
                                  source=builder.builder_config.split_files.get(split, split))
