"""LameR's and HyDE's text pieces: the prompts and the augmented query.

LameR (Shen et al. 2023; no official code) prompts an LLM with the query and its top-M BM25
candidates (right or wrong: in-domain demonstrations) for N answers, then searches BM25 with
the query augmented by them. Its prompts (Table 1 and Appendix A, Table 7, adapted from
HyDE's) are per data set: `answering` (MS MARCO, DBpedia) and `scientific` (SciFact,
TREC-COVID) here. Queries and candidates are cut to 128 tokens in the paper; here to 128
whitespace words (`max_words`), which needs no tokenizer.

Two constructions of the augmented query (`augment`):
- `interleave` (the paper's Eq. 5, the default): Concat(q, a1, q, a2, ..., q, aN);
- `repeat` (CSQE, Yibin-Lei/CSQE `csqe.py`, by a LameR author): the query N times, then the
  answers (CSQE also lowercases and joins with newlines, which BM25's tokenizer ignores).

HyDE (Gao et al. 2022, texttron/hyde `promptor.py`, `hyde.py`) writes N passages from the
query alone; the search vector is the unweighted mean of the query's and the passages'
embeddings.
"""

from __future__ import annotations

from typing import Sequence

from retrieval_jax.generation.backend import Message

# LameR's instructions by kind of collection (Shen et al. 2023, Tables 1 and 7).
LAMER_INSTRUCTIONS = {
    "answering": ("Give a question \"{query}\" and its possible answering passages (most of "
                  "these passages are wrong) enumerated as: \n{candidates}\n please write a "
                  "correct answering passage."),
    "scientific": ("Give a question \"{query}\" and its possible scientific paper passages "
                   "(most of these passages are wrong) enumerated as: \n{candidates}\n please "
                   "write a correct scientific paper passage."),
}
# HyDE's templates (texttron/hyde `promptor.py`).
HYDE_TEMPLATES = {
    "web_search": "Please write a passage to answer the question.\nQuestion: {query}\nPassage:",
    "scifact": ("Please write a scientific paper passage to support/refute the claim.\n"
                "Claim: {query}\nPassage:"),
}

AUGMENTS = ("interleave", "repeat")


def truncate_words(text: str, max_words: int) -> str:
  """The first `max_words` whitespace-separated words of `text`."""
  words = text.split()
  return " ".join(words[:max_words])


def lamer_prompt(query: str, candidates: Sequence[str], kind: str = "answering",
                 max_words: int = 128) -> list[Message]:
  """A one-turn chat prompt: the query and its numbered candidates, each cut to `max_words`."""
  if kind not in LAMER_INSTRUCTIONS:
    raise ValueError(f"prompt={kind!r}; use one of {sorted(LAMER_INSTRUCTIONS)}")
  listed = " \n".join(f"{i}. {truncate_words(c, max_words)}"
                      for i, c in enumerate(candidates, start=1))
  content = LAMER_INSTRUCTIONS[kind].format(query=truncate_words(query, max_words),
                                            candidates=listed)
  return [{"role": "user", "content": content}]


def hyde_prompt(query: str, kind: str = "web_search") -> list[Message]:
  """HyDE's prompt for one query as a one-turn chat."""
  if kind not in HYDE_TEMPLATES:
    raise ValueError(f"prompt={kind!r}; use one of {sorted(HYDE_TEMPLATES)}")
  return [{"role": "user", "content": HYDE_TEMPLATES[kind].format(query=query)}]


def augmented_query(query: str, answers: Sequence[str], augment: str = "interleave") -> str:
  """The BM25 query: `query` with its generated `answers` (see the module docstring)."""
  answers = [" ".join(a.split()) for a in answers]  # one line each: BM25 sees only terms
  if augment == "repeat":
    return " ".join([query] * len(answers) + answers)
  if augment == "interleave":
    return " ".join(part for a in answers for part in (query, a))
  raise ValueError(f"augment={augment!r}; use one of {AUGMENTS}")
