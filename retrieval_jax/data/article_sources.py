"""Where Chang et al.'s pre-training articles come from: `config.data.articles`.

  wikispeedia[:<directory>]  the 4,604 Wikispeedia articles and their link graph
                             (`data.wikispeedia`); bare: found like every data set
  jsonl:<file>               an article JSONL file (`data.articles` format), e.g. what
                             `python -m retrieval_jax.data.wikipedia_dump` wrote from a dump
  tfds:<file>                the same file through its TFDS builder (`data.articles_tfds`),
                             prepared once as array_record under `data.tfds_dir`
  synthetic                  small generated articles (smoke runs, tests)
No JAX.
"""

from __future__ import annotations

import os

from retrieval_jax.data import articles as articles_lib

SCHEMES = ("wikispeedia", "jsonl", "tfds", "synthetic")


def load_articles(source: str, *, splitter: str = "blingfire", key: str = "data.articles",
                  tfds_dir: str | os.PathLike | None = None) -> list[articles_lib.Article]:
  """The articles of `source` (module docstring).

  Raises:
    ValueError: An unknown scheme, or a source with no articles, naming `key`.
    FileNotFoundError: Naming the file or directory looked for.
  """
  scheme, _, where = str(source).partition(":")
  if scheme not in SCHEMES:
    raise ValueError(f"{key}={source!r} is not <scheme>[:<where>] with a scheme of {SCHEMES}")
  if scheme in ("jsonl", "tfds") and not where:
    raise ValueError(f"{key}={source!r}: name the article file after '{scheme}:'")
  if scheme == "wikispeedia":
    from retrieval_jax.data import wikispeedia  # pylint: disable=g-import-not-at-top
    found = wikispeedia.read_articles(where or "wikispeedia", splitter=splitter)
  elif scheme == "jsonl":
    found = articles_lib.read_jsonl(where)
  elif scheme == "tfds":
    from retrieval_jax.data import articles_tfds  # pylint: disable=g-import-not-at-top
    found = articles_tfds.load_articles(where, data_dir=tfds_dir)
  else:
    from retrieval_jax.data import synthetic_wiki  # pylint: disable=g-import-not-at-top
    found = synthetic_wiki.synthetic_articles()
  if not found:
    raise ValueError(f"{key}={source!r} holds no article")
  return found
