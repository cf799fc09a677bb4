"""Small synthetic articles with links and a synthetic SQuAD file, generated in memory: the
`smoke` variants of `configs/chang.py` and `configs/reqa.py`, and tests that need no files.

Sentences are random ordinary words (`synthetic._WORDS`) ending in a full stop, so sentence
splitters and WordPiece treat them like text; every article links to a few others from
paragraphs of its body. Questions are words of one sentence of their paragraph, and their
answer is that sentence's first word, so the ReQA task is learnable by lexical overlap.
"""

from __future__ import annotations

import numpy as np

from retrieval_jax.data.articles import Article, Paragraph, Section
from retrieval_jax.data.synthetic import _WORDS

NAME = "synthetic"


def _sentence(rng: np.random.Generator, words: int) -> str:
  return " ".join(rng.choice(_WORDS, size=words)).capitalize() + "."


def synthetic_articles(num_articles: int = 24, *, seed: int = 0) -> list[Article]:
  """Articles `topic 0` ... with a 2-paragraph lead, a body section and links."""
  rng = np.random.default_rng([seed, 7])
  titles = [f"topic {i}" for i in range(num_articles)]
  articles = []
  for i, title in enumerate(titles):
    def paragraph(links=()):
      return Paragraph(tuple(_sentence(rng, 8) for _ in range(int(rng.integers(2, 5)))),
                       tuple(links))
    targets = [titles[t] for t in rng.choice(num_articles, size=3, replace=False) if t != i]
    lead = Section("", (paragraph(), paragraph()))
    body = Section("Body", tuple(paragraph(targets[k:k + 1]) for k in range(len(targets))))
    articles.append(Article(title, (lead, body), tuple(targets)))
  return articles


def synthetic_squad(num_articles: int = 12, *, paragraphs: int = 3, questions: int = 3,
                    seed: int = 0) -> dict:
  """A SQuAD v1.1-format dict (`{"data": [...], "version": "1.1"}`)."""
  rng = np.random.default_rng([seed, 8])
  data = []
  for a in range(num_articles):
    entries = []
    for p in range(paragraphs):
      sentences = [_sentence(rng, 10) for _ in range(4)]
      context = " ".join(sentences)
      qas = []
      for q in range(questions):
        s = int(rng.integers(len(sentences)))
        start = context.index(sentences[s])
        words = sentences[s].rstrip(".").split()
        question = " ".join(rng.choice(words[1:], size=4, replace=False)) + "?"
        qas.append({"answers": [{"answer_start": start, "text": words[0]}],
                    "question": question, "id": f"synthetic-{a:03d}-{p:03d}-{q:02d}"})
      entries.append({"context": context, "qas": qas})
    data.append({"title": f"Topic_{a}", "paragraphs": entries})
  return {"data": data, "version": "1.1"}
