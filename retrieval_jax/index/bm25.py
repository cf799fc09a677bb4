"""BM25 over a list of texts with bm25s: its tokenizer, a Snowball stemmer and its stopword lists.

Scores are bm25s's own (`BM25.get_scores_from_ids`); what this wrapper adds is a well-defined top-k:
  * only documents that contain at least one query term are returned. The slots a query cannot fill
    (all of them for a query whose terms are all stopwords or unknown) hold index -1 and score -inf,
    where bm25s would return arbitrary documents with score 0;
  * ties are broken by the lower document index, on every backend;
  * k larger than the corpus is an error, as in `exact_search`.

bm25s is imported lazily: importing it runs a JAX computation, which must not happen before a
launcher has had the chance to call `jax.distributed.initialize` or set XLA flags.
"""

import json
import os
from typing import Any, Sequence

import numpy as np

# Beside bm25s's own files in a saved index: what bm25s does not store (the tokenizer settings).
_CONFIG_FILE = "retrieval_jax_bm25.json"


def _bm25s():
  import bm25s  # pylint: disable=g-import-not-at-top
  return bm25s


def _stemmer(language: str | None):
  if language is None:
    return None
  import Stemmer  # pylint: disable=g-import-not-at-top
  return Stemmer.Stemmer(language)


class BM25Index:
  """A bm25s index with the tokenizer settings it was built with.

  Build with `BM25Index.build`, or `BM25Index.load` a saved one.
  """

  def __init__(self, retriever: Any, *, stemmer_language: str | None,
               stopwords: str | Sequence[str] | None):
    """Wraps a bm25s.BM25 indexed on bm25s.tokenize(docs, stopwords=..., stemmer=...) output."""
    self._retriever = retriever
    self.stemmer_language = stemmer_language
    if stopwords is not None and not isinstance(stopwords, str):
      stopwords = list(stopwords)  # JSON-friendly for `save`.
    self.stopwords = stopwords
    self._stemmer = _stemmer(stemmer_language)

  @classmethod
  def build(
      cls,
      docs: Sequence[str],
      *,
      k1: float = 0.9,
      b: float = 0.4,
      method: str = "lucene",
      stemmer_language: str | None = "english",
      stopwords: str | Sequence[str] | None = "en",
      progress: bool = False,
  ) -> "BM25Index":
    """Indexes documents.

    Args:
      docs: one text per document (for BEIR, title + " " + text, formed by the caller).
      k1: term-frequency saturation (0.9 is Anserini's / BEIR's Lucene baseline).
      b: length normalisation (0.4, likewise).
      method: bm25s's BM25 variant: 'lucene', 'robertson', 'atire', 'bm25l' or 'bm25+'.
      stemmer_language: a PyStemmer (Snowball) language, or None for no stemming.
      stopwords: a bm25s stopword list name ('en'), a list of words, or None for none.
      progress: show bm25s's progress bars.

    Returns:
      The index; documents are numbered in the order given.
    """
    if not docs:
      raise ValueError("cannot build a BM25 index over no documents")
    bm25s = _bm25s()
    index = cls(bm25s.BM25(k1=k1, b=b, method=method), stemmer_language=stemmer_language,
                stopwords=stopwords)
    tokens = bm25s.tokenize(list(docs), stopwords=index._stopwords_arg(), stemmer=index._stemmer,
                            show_progress=progress)
    index._retriever.index(tokens, show_progress=progress)
    return index

  @property
  def num_docs(self) -> int:
    return int(self._retriever.scores["num_docs"])

  def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best documents for each query by BM25 score.

    Args:
      queries: query texts, tokenized like the documents.
      k: results per query, 1 <= k <= num_docs.

    Returns:
      scores: [num_queries, k] float32 BM25 scores, decreasing; -inf in slots with no result.
      indices: [num_queries, k] int64 document numbers; among equal scores the lower one first;
        -1 in the slots of a query that matches fewer than k documents (every slot, for a query
        with no known term). Skip them (`metrics.run_from_topk` does): numpy would read -1 as the
        last row.

    Raises:
      ValueError: if k < 1 or k > num_docs.
    """
    if not 1 <= k <= self.num_docs:
      raise ValueError(f"k must be between 1 and the corpus size {self.num_docs}, got {k}")
    query_tokens = _bm25s().tokenize(list(queries), stopwords=self._stopwords_arg(),
                                     stemmer=self._stemmer, return_ids=False, show_progress=False)
    all_scores = np.full((len(query_tokens), k), -np.inf, np.float32)
    all_indices = np.full((len(query_tokens), k), -1, np.int64)
    for row, tokens in enumerate(query_tokens):
      token_ids = self._known_token_ids(tokens)
      if not token_ids:
        continue
      doc_scores = self._retriever.get_scores_from_ids(token_ids)
      matching = self._documents_containing(token_ids)
      best = _top_k_lowest_index_first(doc_scores[matching], k)
      all_scores[row, :len(best)] = doc_scores[matching[best]]
      all_indices[row, :len(best)] = matching[best]
    return all_scores, all_indices

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the bm25s index (its own format) and the tokenizer settings into a directory."""
    os.makedirs(directory, exist_ok=True)
    self._retriever.save(str(directory), show_progress=False)
    config = {"stemmer_language": self.stemmer_language, "stopwords": self.stopwords}
    with open(os.path.join(directory, _CONFIG_FILE), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "BM25Index":
    """Reads an index written by `save`."""
    with open(os.path.join(directory, _CONFIG_FILE), encoding="utf-8") as f:
      config = json.load(f)
    retriever = _bm25s().BM25.load(str(directory), load_vocab=True, show_progress=False)
    return cls(retriever, stemmer_language=config["stemmer_language"],
               stopwords=config["stopwords"])

  def _stopwords_arg(self) -> str | list[str]:
    # bm25s.tokenize has no "no stopwords" name; an empty list means none.
    return [] if self.stopwords is None else self.stopwords

  def _known_token_ids(self, tokens: Sequence[str]) -> list[int]:
    """Vocabulary ids of the query's tokens, repeats kept (bm25s counts a repeated term twice).

    bm25s adds an empty-string token to the vocabulary with no posting list; it never comes out of
    the tokenizer, but is dropped here too since scoring it would index past the postings.
    """
    vocab = self._retriever.vocab_dict
    return [vocab[token] for token in tokens if token and token in vocab]

  def _documents_containing(self, token_ids: Sequence[int]) -> np.ndarray:
    """Sorted numbers of the documents whose posting lists hold any of the tokens."""
    postings = self._retriever.scores
    starts, ends = postings["indptr"], postings["indptr"][1:]
    # A mark per document, not np.unique of the concatenated lists: a common term's list
    # spans much of the corpus, and sorting it per query dominated search time.
    marked = np.zeros(self.num_docs, bool)
    for t in set(token_ids):
      marked[postings["indices"][starts[t]:ends[t]]] = True
    return np.flatnonzero(marked).astype(np.int64)


def _top_k_lowest_index_first(scores: np.ndarray, k: int) -> np.ndarray:
  """Positions of the min(k, len) largest scores, decreasing, ties by lower position.

  Linear-time selection first (a common term can match most of a large corpus), then a sort of the
  selected few.
  """
  if len(scores) > k:
    kth_best = np.partition(scores, len(scores) - k)[len(scores) - k]
    above = np.flatnonzero(scores > kth_best)
    tied = np.flatnonzero(scores == kth_best)[:k - len(above)]
    selected = np.concatenate([above, tied])
  else:
    selected = np.arange(len(scores))
  # lexsort sorts by the last key first: score descending, then position ascending.
  return selected[np.lexsort((selected, -scores[selected]))]
