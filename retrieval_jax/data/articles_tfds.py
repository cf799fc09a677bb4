"""A TFDS builder over an article JSONL file (`data.articles`), written as array_record.

As `beir_tfds`: no TensorFlow (array_record files, read back with `as_data_source`), not
registered by name, one config per source file, its name carrying a hash of the file's resolved
path and contents (an edited file is prepared again, an unchanged one only reopened), the data
dir from `beir_tfds.check_data_dir` (`$RETRIEVAL_JAX_TFDS_DIR`, else `~/tensorflow_datasets`;
local only). One split, `train`, one example per article in file order (`disable_shuffling`).

Features. An article nests three levels deep (sections > paragraphs > sentences), and TFDS
serialises a sequence of sequences as a ragged tensor, which needs TensorFlow (preparing fails
with "No module named 'tensorflow'" here). Rather than one opaque JSON string, an article is
stored as flat sequences plus their row lengths, the encoding ragged tensors use:

  title                  Text
  links                  Sequence(Text)    the article's links
  section_titles         Sequence(Text)    one per section ("" for the lead)
  section_sizes          Sequence(int32)   paragraphs per section
  paragraph_sizes        Sequence(int32)   sentences per paragraph
  paragraph_link_counts  Sequence(int32)   links per paragraph
  sentences              Sequence(Text)    every sentence, in order
  paragraph_links        Sequence(Text)    every paragraph's links, in order

so the features are typed and readable by any TFDS reader without our JSON schema, and
`load_articles` rebuilds the `Article`s exactly. No JAX.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from retrieval_jax.data import articles as articles_lib
from retrieval_jax.data import beir_tfds
from retrieval_jax.data import paths

SPLIT = "train"
_READ_CHUNK = 1024  # Articles fetched per random-access call when reading back.


@dataclasses.dataclass
class ArticlesConfig(tfds.core.BuilderConfig):
  """The articles of one JSONL file (`source`, local or remote)."""
  source: str = ""


def _features() -> tfds.features.FeaturesDict:
  def strings():
    return tfds.features.Sequence(tfds.features.Text())

  def sizes():
    return tfds.features.Sequence(np.int32)

  return tfds.features.FeaturesDict({
      "title": tfds.features.Text(), "links": strings(), "section_titles": strings(),
      "section_sizes": sizes(), "paragraph_sizes": sizes(), "paragraph_link_counts": sizes(),
      "sentences": strings(), "paragraph_links": strings()})


def encode(article: articles_lib.Article) -> dict:
  """An `Article` as the builder's flat features (module docstring)."""
  paragraphs = article.paragraphs
  return {
      "title": article.title, "links": list(article.links),
      "section_titles": [s.title for s in article.sections],
      "section_sizes": [len(s.paragraphs) for s in article.sections],
      "paragraph_sizes": [len(p.sentences) for p in paragraphs],
      "paragraph_link_counts": [len(p.links) for p in paragraphs],
      "sentences": [s for p in paragraphs for s in p.sentences],
      "paragraph_links": [t for p in paragraphs for t in p.links]}


def _strings(values) -> list[str]:
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _cut(values: list, sizes) -> list[tuple]:
  pieces, start = [], 0
  for size in sizes:
    pieces.append(tuple(values[start:start + int(size)]))
    start += int(size)
  return pieces


def decode(record: dict) -> articles_lib.Article:
  """The `Article` of a record read back (strings as bytes or str, sizes as ints)."""
  sentences = _cut(_strings(record["sentences"]), record["paragraph_sizes"])
  links = _cut(_strings(record["paragraph_links"]), record["paragraph_link_counts"])
  paragraphs = [articles_lib.Paragraph(s, l) for s, l in zip(sentences, links)]
  sections = [articles_lib.Section(title, ps) for title, ps in zip(
      _strings(record["section_titles"]), _cut(paragraphs, record["section_sizes"]))]
  title = record["title"]
  return articles_lib.Article(title.decode("utf-8") if isinstance(title, bytes) else title,
                              tuple(sections), tuple(_strings(record["links"])))


class ArticlesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The articles of one JSONL file (module docstring); configs come from `config_for`."""
  name = "retrieval_jax_articles"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Articles as flat sequences with row lengths, in file order."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=f"Articles of {self.builder_config.source}",
        features=_features(), disable_shuffling=True)  # Example i stays article i of the file.

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the source is a local or remote file.
    return {SPLIT: self._generate_examples(self.builder_config.source)}

  def _generate_examples(self, source: str):
    """Yields (article index, features); `read_jsonl`'s errors name the file and line."""
    for index, article in enumerate(articles_lib.iter_jsonl(source)):
      yield index, encode(article)


def config_for(jsonl_path: str | os.PathLike) -> ArticlesConfig:
  """The config of a JSONL file; its name changes with the file's path or contents."""
  path = paths.user_path(jsonl_path)
  if not path.exists():
    raise FileNotFoundError(f"articles file {path} does not exist")
  digest = hashlib.sha256(str(paths.resolved(path)).encode("utf-8"))
  with path.open("rb") as f:
    digest.update(hashlib.file_digest(f, "sha256").digest())
  slug = re.sub(r"[^A-Za-z0-9_]+", "_", path.name.split(".")[0]) or "articles"
  return ArticlesConfig(name=f"{slug}-{digest.hexdigest()[:16]}", source=str(path),
                        description=f"Articles of {path}")


def prepare(jsonl_path: str | os.PathLike,
            data_dir: str | os.PathLike | None = None) -> ArticlesBuilder:
  """Prepares the articles of `jsonl_path` in `data_dir` unless already done; the builder."""
  data_dir = beir_tfds.check_data_dir(data_dir)
  return beir_tfds.prepare_builder(ArticlesBuilder(config=config_for(jsonl_path), data_dir=data_dir,
                                                   file_format="array_record"))


def read_prepared(builder: tfds.core.DatasetBuilder) -> list[articles_lib.Article]:
  """Every article of a prepared builder, in file order, fetched by index in chunks."""
  source = builder.as_data_source(split=SPLIT)
  result = []
  with tqdm.tqdm(total=len(source), desc="reading articles", unit=" articles",
                 delay=2.0) as bar:
    for start in range(0, len(source), _READ_CHUNK):
      chunk = source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source)))))
      result.extend(decode(record) for record in chunk)
      bar.update(len(chunk))
  return result


def load_articles(jsonl_path: str | os.PathLike,
                  data_dir: str | os.PathLike | None = None) -> list[articles_lib.Article]:
  """The articles of a JSONL file through TFDS: prepared once in `data_dir`, then read back.

  Raises:
    FileNotFoundError: When `jsonl_path` does not exist.
    beir_readers.DataError: A bad line of the file (while preparing), naming the file and line.
    ValueError: A remote `data_dir`.
  """
  return read_prepared(prepare(jsonl_path, data_dir))

