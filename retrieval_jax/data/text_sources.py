"""Unlabelled text corpora for pre-training (Contriever's crops): one list of texts per source.

A source is named by a string (`config.data.sources`):

  beir:<name or directory>   a BEIR corpus, each document `f"{title} {text}"` (as encoders see
                             it); no queries or labels are read
  wikispeedia[:<directory>]  the 4,604 Wikispeedia articles (`plaintext_articles.jsonl.gz`),
                             without the file's `#copyright` line and the "2007 Schools
                             Wikipedia Selection" banner; paragraphs joined by newlines
  jsonl:<file>               one JSON object per line with a `text` (and optional `title`)
  synthetic                  the synthetic corpus's documents (smoke runs, tests)

Bare names are looked up like data sets (`$RETRIEVAL_JAX_DATA`, then `../shared/data`). No JAX.
"""

from __future__ import annotations

import gzip
import json
import os
import re

from retrieval_jax.data import beir_readers
from retrieval_jax.data import paths

SCHEMES = ("beir", "wikispeedia", "jsonl", "synthetic")
_WIKISPEEDIA_FILE = "plaintext_articles.jsonl.gz"
_BANNER = re.compile(r"^\s*2007 Schools Wikipedia Selection\.")


def read_texts(source: str, *, key: str = "data.sources") -> list[str]:
  """The texts of one source (module docstring).

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
  else:
    texts = _jsonl(where, key)
  if not texts:
    raise ValueError(f"{key}: {source!r} holds no text")
  return texts


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
