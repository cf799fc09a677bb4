"""A small synthetic BEIR data set, generated in memory: smoke runs and tests with no files.

Documents are random sequences of ordinary English words; each query is a few words drawn from
its one relevant document, so the task is learnable (lexical overlap) even by a tiny random
encoder in a few steps. Splits follow the real data sets: `train` holds every query, `dev` and
`train_minus_dev` are carved from it by the same id hash as `beir.in_dev`, `test` is the dev part
(there are no held-back judgements to protect here).
"""

from __future__ import annotations

import numpy as np

from retrieval_jax.data.beir import BeirData, in_dev

NAME = "synthetic"

# Common words a WordPiece vocabulary keeps whole, so token ids differ between documents.
_WORDS = tuple("""
apple river mountain doctor engine garden window silver market winter forest ocean planet
music school castle bridge rabbit candle island letter machine orange pencil rocket summer
tiger violin wagon yellow zebra anchor basket camera desert feather guitar hammer jacket kettle
ladder mirror needle parrot pillow rubber saddle tunnel umbrella valley wallet butter cotton
dragon empire falcon glacier harbor insect jungle lantern meadow nickel oyster pepper quartz
shadow thunder velvet walnut almond bamboo cactus dolphin eagle fossil granite honey iron jade
""".split())

SPLITS = ("train", "dev", "train_minus_dev", "test")


def synthetic_beir(split: str = "train", *, num_docs: int = 96, num_queries: int = 80,
                   doc_words: int = 24, query_words: int = 5, dev_fraction: float = 0.2,
                   seed: int = 0) -> BeirData:
  """One split of the synthetic data set (the same corpus and queries for every split).

  Args:
    split: `train`, `dev`, `train_minus_dev` or `test` (= dev).
    num_docs: Corpus size.
    num_queries: Queries in `train`; query i's relevant document is document i.
    doc_words: Words per document.
    query_words: Words per query, drawn from its document.
    dev_fraction: Share of queries carved out as dev (by id hash, as `beir.in_dev`).
    seed: Generator seed.

  Returns:
    The split's `BeirData`; `name` is `synthetic`.

  Raises:
    ValueError: For an unknown split or sizes that do not fit.
  """
  if split not in SPLITS:
    raise ValueError(f"synthetic data has splits {SPLITS}, not {split!r}")
  if not 0 < num_queries <= num_docs:
    raise ValueError(f"need 0 < num_queries ({num_queries}) <= num_docs ({num_docs})")
  if not 0 < query_words <= doc_words:
    raise ValueError(f"need 0 < query_words ({query_words}) <= doc_words ({doc_words})")
  rng = np.random.default_rng(seed)
  words = np.asarray(_WORDS)
  docs = [rng.choice(words, doc_words) for _ in range(num_docs)]
  corpus_ids = [f"doc{i}" for i in range(num_docs)]
  query_ids = [f"q{i}" for i in range(num_queries)]
  query_texts = [" ".join(rng.choice(docs[i], query_words, replace=False))
                 for i in range(num_queries)]
  if split == "train":
    keep = [True] * num_queries
  else:
    dev = [in_dev(query_id, dev_fraction) for query_id in query_ids]
    keep = [not d for d in dev] if split == "train_minus_dev" else dev
  kept = [i for i in range(num_queries) if keep[i]]
  if not kept:
    raise ValueError(f"synthetic split {split!r} is empty; raise num_queries ({num_queries})")
  return BeirData(
      name=NAME, corpus_ids=corpus_ids, corpus_titles=[""] * num_docs,
      corpus_texts=[" ".join(d) for d in docs], query_ids=[query_ids[i] for i in kept],
      query_texts=[query_texts[i] for i in kept],
      qrels={query_ids[i]: {corpus_ids[i]: 1} for i in kept})
