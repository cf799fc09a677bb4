"""Unlabelled text corpora for pre-training (Contriever's crops): one list of texts per source.

A source is named by a string (`config.data.sources`):

  beir:<name or directory>   a BEIR corpus, each document `f"{title} {text}"` (as encoders see
                             it); no queries or labels are read
  wikispeedia[:<directory>]  the 4,604 Wikispeedia articles (`plaintext_articles.jsonl.gz`),
                             without the file's `#copyright` line and the "2007 Schools
                             Wikipedia Selection" banner; paragraphs joined by newlines
  jsonl:<file>               one JSON object per line with a `text` (and optional `title`)
  tfds:<name>[@<split>]      a TFDS data set with a `text` (and optional `title`) feature, read
                             with `as_data_source` (array_record, no TensorFlow) from
                             `data.tfds_dir`; e.g. `tfds:wikipedia/20230601.en@train[:10%]`.
                             Prepared there (downloaded) on first use when it is not yet;
                             `wikipedia` needs apache-beam for that, so prepare it once with
                             `tfds build wikipedia/20230601.en --file_format=array_record`.
                             Split defaults to `train`
  synthetic                  the synthetic corpus's documents (smoke runs, tests)

Bare names are looked up like data sets (`$RETRIEVAL_JAX_DATA`, then `../shared/data`). Every
source is read whole into memory (the reference tokenises its corpora up front too): take a TFDS
split slice to bound it. `token_streams` turns sources into what the pre-training batchers
cut: each source's texts tokenised without special tokens and concatenated. No JAX.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import json
import os
import re
from collections.abc import Sequence

import numpy as np
import tqdm

from retrieval_jax.data import beir_readers
from retrieval_jax.data import paths

SCHEMES = ("beir", "wikispeedia", "jsonl", "tfds", "synthetic")
_WIKISPEEDIA_FILE = "plaintext_articles.jsonl.gz"
_BANNER = re.compile(r"^\s*2007 Schools Wikipedia Selection\.")


def read_texts(source: str, *, key: str = "data.sources",
               tfds_dir: str | os.PathLike | None = None) -> list[str]:
  """The texts of one source (module docstring); `tfds_dir` is where TFDS data is prepared
  (default `paths.default_tfds_dir()`).

  Raises:
    ValueError: An unknown scheme or an empty source, naming `key`; a bad line
      (`beir_readers.DataError`), naming the file and line.
    FileNotFoundError: Naming what was looked for.
  """
  scheme, _, where = str(source).partition(":")
  if scheme not in SCHEMES:
    raise ValueError(f"{key}: {source!r} is not <scheme>:<where> with a scheme of {SCHEMES}")
  if scheme == "beir":
    texts = _beir(where, key)
  elif scheme == "synthetic":
    from retrieval_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    texts = synthetic.synthetic_beir("train").doc_strings()
  elif scheme == "wikispeedia":
    texts = wikispeedia_articles(where or "wikispeedia")
  elif scheme == "tfds":
    texts = _tfds(where, key, tfds_dir)
  else:
    texts = _jsonl(where, key)
  if not texts:
    raise ValueError(f"{key}: {source!r} holds no text")
  return texts


def token_stream(tokenizer, texts: Sequence[str], batch_size: int = 1000, *,
                 progress: bool = True, desc: str = "tokenizing") -> np.ndarray:
  """The ids of `texts`, without special tokens, concatenated (int32), as `preprocess.py`."""
  pieces = []
  with tqdm.tqdm(total=len(texts), desc=desc, unit=" texts", delay=2.0,
                 disable=not progress) as bar:
    for start in range(0, len(texts), batch_size):
      # Whole documents on purpose: `verbose=False` silences the longer-than-512 warning.
      encoded = tokenizer(list(texts[start:start + batch_size]), add_special_tokens=False,
                          truncation=False, verbose=False)["input_ids"]
      pieces.extend(np.asarray(ids, np.int32) for ids in encoded)
      bar.update(len(encoded))
  return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


def token_streams(sources: Sequence[str], tokenizer, *, tfds_dir=None, progress: bool = True,
                  key: str = "data.sources") -> list[np.ndarray]:
  """One token stream (`token_stream`) per source, errors naming `key[i]`."""
  if not sources:
    raise ValueError(f"{key} is empty: name at least one text source")
  streams = []
  for i, source in enumerate(sources):
    texts = read_texts(source, key=f"{key}[{i}]", tfds_dir=tfds_dir)
    streams.append(token_stream(tokenizer, texts, progress=progress,
                                desc=f"tokenizing {source}"))
  return streams


def _beir(where: str, key: str) -> list[str]:
  if not where:
    raise ValueError(f"{key}: 'beir:' needs a data set name or directory")
  directory = paths.find_dataset(where)
  if directory is None:
    raise FileNotFoundError(f"{key}: no BEIR data set {where!r} (looked in "
                            f"{[str(r) for r in paths.search_roots()]})")
  corpus = beir_readers.locate_files(directory).corpus
  return [f"{title} {text}".strip() for _, _, title, text in beir_readers.iter_corpus(corpus)]


def wikispeedia_articles(name_or_directory: str = "wikispeedia") -> list[str]:
  """The Wikispeedia articles' plain text, in `articles.tsv` order."""
  directory = paths.find_dataset(name_or_directory)
  path = None if directory is None else directory / _WIKISPEEDIA_FILE
  if path is None or not path.exists():
    raise FileNotFoundError(f"no {_WIKISPEEDIA_FILE} in {name_or_directory!r} (looked in "
                            f"{[str(r) for r in paths.search_roots()]})")
  with gzip.open(os.fspath(path), "rt", encoding="utf-8") as lines:
    return [clean_wikispeedia(json.loads(line)["text"]) for line in lines]


def clean_wikispeedia(text: str) -> str:
  """An article's paragraphs, each on one line, without the dump's header and banner."""
  paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
  kept = [p for p in paragraphs if p and p != "#copyright" and not _BANNER.match(p)]
  return "\n".join(kept)


def _jsonl(where: str, key: str) -> list[str]:
  path = paths.user_path(where) if where else None
  if path is None or not path.exists():
    raise FileNotFoundError(f"{key}: no JSONL file {where!r}")
  texts = []
  for line, record in beir_readers.iter_jsonl(path, "texts"):
    text = beir_readers.field(path, line, record, "text", required=True)
    title = beir_readers.field(path, line, record, "title", required=False)
    texts.append(f"{title} {text}".strip())
  return texts


def _tfds(where: str, key: str, tfds_dir) -> list[str]:
  name, _, split = where.partition("@")
  if not name:
    raise ValueError(f"{key}: 'tfds:' needs a TFDS name, e.g. tfds:wikipedia/20230601.en")
  # TFDS, and the array_record checks, only when a TFDS source is named.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import beir_tfds  # pylint: disable=g-import-not-at-top

  data_dir = beir_tfds.check_data_dir(tfds_dir)
  builder = _tfds_builder(tfds, name, data_dir, key)
  if not builder.is_prepared():
    try:
      beir_tfds.prepare_builder(builder, file_format="array_record")
    except ImportError as error:
      raise ValueError(
          f"{key}: preparing TFDS {name} in {data_dir} needs a missing package ({error}); "
          f"prepare it once with `tfds build {name} --file_format=array_record "
          f"--data_dir={data_dir}` where that package is installed") from None
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if file_format != "array_record":
    raise ValueError(
        f"{key}: TFDS {name} in {data_dir} is prepared as {file_format}, which needs "
        "TensorFlow to read; convert it with `tfds convert_format --out_file_format=array_record"
        f" --dataset_dir={builder.data_dir}`")
  features = builder.info.features
  if "text" not in features:
    raise ValueError(f"{key}: TFDS {name} has no `text` feature (it has {sorted(features)})")
  try:
    records = beir_tfds.read_split(builder, split or "train")
  except (KeyError, ValueError) as error:
    raise ValueError(f"{key}: TFDS {name}: split {split or 'train'!r}: {error}") from None
  return [f"{record.get('title', '')} {record['text']}".strip() for record in records]


def _tfds_builder(tfds, name: str, data_dir: str, key: str):
  """`tfds.builder(name)`, importing `tensorflow_datasets.text.<name>` first when TFDS has not
  registered it (without TensorFlow, TFDS registers only part of its catalogue)."""
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    module = "tensorflow_datasets.text." + name.split("/", 1)[0].split(":", 1)[0]
    try:
      found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
      found = False
    if not found:
      raise ValueError(f"{key}: no TFDS data set {name!r} (registered or in {data_dir})") from None
  importlib.import_module(module)
  return tfds.builder(name, data_dir=data_dir)
