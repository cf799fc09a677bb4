"""Sentence splitting for article paragraphs, with a library splitter (never hand-written regexes).

Every article producer (`data.wikispeedia`, `data.wikipedia_dump`) splits its paragraphs here, so
the Inverse Cloze, Body First Selection and Wiki Link Prediction pairs all see the same sentences.

Two splitters:

  * `blingfire` (the default): Microsoft's BlingFire, a C++ finite-state tokenizer. Measured on
    Wikispeedia paragraphs on this machine it splits about 16 MB/s, so the 4,604 articles (about
    100 MB of text) take seconds, and a Wikipedia dump is not bottlenecked on sentences.
  * `pysbd`: the rule-based pySBD (Sadvilkar & Neumann 2020), pure Python, about 0.26 MB/s here
    (60 times slower). It handles some abbreviations and quotations better (it keeps
    `He said "Hi!" and left.` whole, where BlingFire breaks after the quote), and both gave the
    same boundaries on a plain check sentence, so it is the alternative when quality matters
    more than time.

Whitespace is normalised first (newlines inside a paragraph, runs of spaces, tabs become one
space), and empty sentences are dropped. No JAX.
"""

from __future__ import annotations

import functools

import blingfire

SPLITTERS = ("blingfire", "pysbd")


@functools.cache
def _pysbd_segmenter():
  # Building the segmenter compiles its rules: once per process, not once per paragraph.
  import pysbd  # pylint: disable=g-import-not-at-top
  # `clean=False`: pySBD's cleaning rewrites the text, and sentences must be substrings of it.
  return pysbd.Segmenter(language="en", clean=False)


def check_splitter(splitter: str) -> str:
  """`splitter` if it is one of `SPLITTERS`, else a ValueError naming it and the choices."""
  if splitter not in SPLITTERS:
    raise ValueError(f"unknown sentence splitter {splitter!r}: choose one of {SPLITTERS}")
  return splitter


def split_sentences(text: str, splitter: str = "blingfire") -> list[str]:
  """The sentences of one paragraph.

  Args:
    text: a paragraph; it may hold newlines (wrapped lines), which become spaces.
    splitter: `"blingfire"` (default, fast) or `"pysbd"` (see the module docstring).

  Returns:
    The non-empty sentences, each with its whitespace normalised, in order.

  Raises:
    ValueError: An unknown `splitter`, naming it and the choices.
  """
  check_splitter(splitter)
  text = " ".join(text.split())
  if not text:
    return []
  if splitter == "blingfire":
    # BlingFire answers "" when its C call fails: keep the paragraph whole rather than lose it.
    pieces = (blingfire.text_to_sentences(text) or text).split("\n")
  else:
    pieces = _pysbd_segmenter().segment(text)
  # The text is normalised already; BlingFire keeps it so, pySBD leaves the trailing space.
  return [piece.strip() for piece in pieces if piece.strip()]
