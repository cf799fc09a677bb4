"""ReQA SQuAD (Ahmad et al. 2019), as Chang et al. 2020 evaluate on it: sentence retrieval.

The protocol is google/retrieval-qa-eval's `squad_eval.py`; this module rebuilds its data from a
SQuAD v1.1 JSON file by the same rules:

  * Sentences: each paragraph context is split by `reqa_sb_sed.infer_sentence_breaks` (the
    protocol's own splitter, vendored verbatim).
  * Candidates: every (sentence, context) pair of every paragraph with at least one answered
    question (the script adds a paragraph's sentences when it yields a question; in SQuAD v1.1
    that is every paragraph), deduplicated on (sentence, context), in file order. A candidate
    keeps the paragraph and article where it first occurs.
  * Questions: one per SQuAD question. Its answer sentences are the sentences holding each
    answer's `answer_start` (distinct); its gold candidates are every candidate whose sentence
    text equals one of them, in any paragraph (the script's `response_index` is keyed by text).
    The script makes one (question, answer sentence) entry per distinct answer sentence and
    keeps the best rank of a question's entries; one question with the union of their gold
    sets has the same best rank.
  * Evaluation is by question text: a text asked several times keeps its best rank (the script
    keys its results by text), so `evaluation_set` merges such questions, gold sets united.

A dual encoder reads a candidate as `candidate_text(sentence, context)`.

Splits follow Chang et al. 2020 (1%/5%/80% of the data for fine-tuning): by article, see
`split_by_article`. Nothing here imports JAX.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import os
import warnings
from typing import Any, Iterable, Sequence

import numpy as np

from retrieval_jax import files
from retrieval_jax.data import paths
from retrieval_jax.data import reqa_sb_sed

# The SQuAD v1.1 files a data directory may hold, by split (the `.gz` form is also read).
SPLIT_FILES = {"train": "train-v1.1.json", "dev": "dev-v1.1.json"}
CANDIDATE_POOLS = ("all", "test")


def sentence_breaks(context: str) -> list[tuple[int, int]]:
  """(start, end) character spans of the context's sentences, by the protocol's splitter."""
  # One of sb_sed's patterns makes `re` warn ("possible nested set") when it compiles it; the
  # vendored file stays verbatim, so the warning is silenced here.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    return list(reqa_sb_sed.infer_sentence_breaks(context))


def candidate_text(sentence: str, context: str) -> str:
  """The document a dual encoder reads for a candidate: the sentence, then its paragraph.

  The sentence comes first so that truncation to a token budget keeps it (the paragraph repeats
  it, so the answer sentence is read twice; Chang et al.'s towers read the pair the same way).
  """
  return f"{sentence} {context}"


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One (sentence, context) pair; `paragraph` counts paragraphs over the file, from 0."""
  sentence: str
  context: str
  paragraph: int
  article: int


@dataclasses.dataclass(frozen=True)
class Question:
  """One SQuAD question.

  Attributes:
    id: The SQuAD id.
    text: The question, verbatim (its evaluation key).
    gold: Candidates (indices) whose sentence equals one of its answer sentences, anywhere.
    answers: Its own paragraph's candidates of its distinct answer sentences (the positives a
      fine-tuning pair uses: always in the question's article).
    article: Its article's index in the file.
  """
  id: str
  text: str
  gold: tuple[int, ...]
  answers: tuple[int, ...]
  article: int


@dataclasses.dataclass(frozen=True)
class Pair:
  """A fine-tuning pair: a question and one of its answer candidates' documents."""
  question_id: str
  query: str
  candidate: int
  document: str


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """What one ReQA evaluation ranks: unique question texts against a pool of candidates.

  Attributes:
    query_ids: One per unique question text (the first SQuAD id asking it).
    query_texts: The texts.
    candidate_ids: Candidate indices (as strings) of the pool, in file order.
    documents: `candidate_text` of each pool candidate.
    qrels: query id -> {gold candidate id: 1}, gold restricted to the pool.
  """
  query_ids: list[str]
  query_texts: list[str]
  candidate_ids: list[str]
  documents: list[str]
  qrels: dict[str, dict[str, int]]


@dataclasses.dataclass
class ReqaData:
  """Candidates and questions of one SQuAD file (see the module docstring).

  Attributes:
    candidates: Deduplicated (sentence, context) pairs in file order.
    questions: Every question in file order.
    titles: Article titles, by article index.
    paragraph_candidates: (article, candidate indices) of each paragraph that has candidates;
      a candidate repeated in two paragraphs is listed in both (it belongs to both articles).
  """
  candidates: list[Candidate]
  questions: list[Question]
  titles: list[str]
  paragraph_candidates: list[tuple[int, tuple[int, ...]]]

  @property
  def num_articles(self) -> int:
    return len(self.titles)

  @classmethod
  def from_squad(cls, squad: Any, source: str = "squad") -> "ReqaData":
    """Builds the data from a parsed SQuAD v1.1 JSON document (`json.load` output).

    Raises:
      ValueError: A missing key or an answer outside every sentence, naming `source` and the
        JSON path (`data[3].paragraphs[2].qas[0]...`).
    """
    candidates: list[Candidate] = []
    index: dict[tuple[str, str], int] = {}
    by_sentence: dict[str, list[int]] = collections.defaultdict(list)
    titles: list[str] = []
    paragraph_candidates = []
    # (question, answer sentences, own candidates) before the gold sets can be looked up.
    pending: list[tuple[str, str, list[str], list[int], int]] = []
    paragraph_count = 0
    for a, article in enumerate(_field(squad, "data", source, "")):
      where = f"data[{a}]"
      titles.append(str(article.get("title", "")) if isinstance(article, dict) else "")
      for p, paragraph in enumerate(_field(article, "paragraphs", source, where)):
        where_p = f"{where}.paragraphs[{p}]"
        context = _field(paragraph, "context", source, where_p)
        breaks = sentence_breaks(context)
        questions = list(_questions(paragraph, context, breaks, source, where_p))
        paragraph_count += 1
        if not questions:  # The script adds a paragraph's sentences only with a question.
          continue
        own = []
        for start, end in breaks:
          key = (context[start:end], context)
          if key not in index:
            index[key] = len(candidates)
            candidates.append(Candidate(key[0], context, paragraph_count - 1, a))
            by_sentence[key[0]].append(index[key])
          own.append(index[key])
        paragraph_candidates.append((a, tuple(dict.fromkeys(own))))
        for question_id, text, sentences in questions:
          answers = [index[(sentence, context)] for sentence in sentences]
          pending.append((question_id, text, sentences, answers, a))
    questions = [
        Question(question_id, text,
                 tuple(sorted({c for s in sentences for c in by_sentence[s]})),
                 tuple(answers), a)
        for question_id, text, sentences, answers, a in pending]
    return cls(candidates, questions, titles, paragraph_candidates)

  def candidates_of(self, articles: Iterable[int]) -> list[int]:
    """Indices of the candidates found in the given articles' paragraphs, in file order."""
    wanted = set(articles)
    return sorted({c for a, ids in self.paragraph_candidates if a in wanted for c in ids})

  def fine_tuning_pairs(self, train_articles: Iterable[int]) -> list[Pair]:
    """(question, answer candidate) of every question of the train articles, one pair per
    distinct answer sentence; the candidate is the one in the question's own paragraph, so no
    pair reaches outside the train articles."""
    wanted = set(train_articles)
    return [Pair(q.id, q.text, c, candidate_text(self.candidates[c].sentence,
                                                  self.candidates[c].context))
            for q in self.questions if q.article in wanted for c in q.answers]

  def evaluation_set(self, test_articles: Iterable[int] | None = None, *,
                     candidates: str = "all", max_questions: int | None = None,
                     seed: int = 0) -> EvalSet:
    """The questions of `test_articles` (None: all) ranked against a pool of candidates.

    Args:
      test_articles: Articles whose questions are evaluated; None: every article.
      candidates: `all`: every candidate of the file (the protocol); `test`: only those of the
        test articles.
      max_questions: Keep a seeded random subset of this many unique question texts (a CPU
        budget); None: all.
      seed: The subset's seed.

    Raises:
      ValueError: An unknown `candidates`, a `max_questions` below 1, or no question.
    """
    if candidates not in CANDIDATE_POOLS:
      raise ValueError(f"candidates={candidates!r} is not one of {CANDIDATE_POOLS}")
    articles = range(self.num_articles) if test_articles is None else test_articles
    articles = set(articles)
    pool = (list(range(len(self.candidates))) if candidates == "all"
            else self.candidates_of(articles))
    in_pool = set(pool)
    gold_by_text: dict[str, set[int]] = {}
    first_id: dict[str, str] = {}
    for question in self.questions:
      if question.article in articles:
        first_id.setdefault(question.text, question.id)
        gold_by_text.setdefault(question.text, set()).update(question.gold)
    texts = list(first_id)
    if max_questions is not None:
      if max_questions < 1:
        raise ValueError(f"max_questions must be at least 1 (or None for all), got "
                         f"{max_questions}")
      if max_questions < len(texts):
        keep = np.random.default_rng(seed).choice(len(texts), max_questions, replace=False)
        texts = [texts[i] for i in sorted(keep)]
    if not texts:
      raise ValueError("no question to evaluate: the selected articles have none")
    query_ids = [first_id[text] for text in texts]
    qrels = {first_id[text]: {str(c): 1 for c in sorted(gold_by_text[text] & in_pool)}
             for text in texts}
    return EvalSet(query_ids, texts, [str(c) for c in pool],
                   [candidate_text(self.candidates[c].sentence, self.candidates[c].context)
                    for c in pool], qrels)


def _field(record: Any, key: str, source: str, where: str) -> Any:
  if not isinstance(record, dict) or key not in record:
    raise ValueError(f"{source}: {where or 'the top level'} has no {key!r}")
  return record[key]


def _questions(paragraph: dict, context: str, breaks: Sequence[tuple[int, int]], source: str,
               where: str):
  """(id, text, distinct answer sentences) of a paragraph's questions with an answer."""
  for q, qa in enumerate(_field(paragraph, "qas", source, where)):
    where_q = f"{where}.qas[{q}]"
    sentences = []
    for n, answer in enumerate(_field(qa, "answers", source, where_q)):
      start = _field(answer, "answer_start", source, f"{where_q}.answers[{n}]")
      sentence = next((context[b:e] for b, e in breaks if b <= start < e), None)
      if sentence is None:
        # The script would map it to the text "None" and fail on the empty gold set.
        raise ValueError(f"{source}: {where_q}.answers[{n}].answer_start={start} is in no "
                         "sentence of the context")
      if sentence not in sentences:
        sentences.append(sentence)
    if sentences:
      yield str(_field(qa, "id", source, where_q)), _field(qa, "question", source, where_q), \
          sentences


def split_by_article(num_articles: int, train_fraction: float,
                     seed: int = 0) -> tuple[list[int], list[int]]:
  """(train articles, test articles), both sorted: a seeded permutation of the articles whose
  first `round(train_fraction * num_articles)` (at least 1) are train.

  Nested by construction: for one seed the permutation is the same whatever the fraction, so
  the 1% train articles are among the 5%, which are among the 80%, and the 80% split's test
  articles are held back by every smaller fraction (evaluate all fractions on those to compare
  them on one test set).

  Raises:
    ValueError: A fraction outside (0, 1), or one leaving no test article.
  """
  if not 0.0 < train_fraction < 1.0:
    raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
  order = np.random.default_rng(seed).permutation(num_articles)
  num_train = max(1, int(round(train_fraction * num_articles)))
  if num_train >= num_articles:
    raise ValueError(f"train_fraction={train_fraction} of {num_articles} articles leaves no "
                     "test article")
  return sorted(order[:num_train].tolist()), sorted(order[num_train:].tolist())


def squad_file(path: str | os.PathLike, split: str = "train") -> paths.AnyPath:
  """The SQuAD JSON file `path` names: a `.json` / `.json.gz` file, or `SPLIT_FILES[split]`
  (or its `.gz`) in a directory or a data set name (`squad`, looked up as `paths.find_dataset`
  does).

  Raises:
    ValueError: An unknown split.
    FileNotFoundError: Naming what was looked for.
  """
  if split not in SPLIT_FILES:
    raise ValueError(f"split={split!r} is not one of {sorted(SPLIT_FILES)}")
  name = os.fspath(path)
  if name.endswith((".json", ".json.gz")):
    found = paths.user_path(name)
    if not found.is_file():
      raise FileNotFoundError(f"SQuAD file {name} does not exist")
    return found
  root = paths.find_dataset(name)
  if root is None:
    roots = ", ".join(str(r) for r in paths.search_roots())
    raise FileNotFoundError(f"SQuAD data {name!r} is neither a .json/.json.gz file nor a "
                            f"directory, here or under {roots}")
  for candidate in (SPLIT_FILES[split], SPLIT_FILES[split] + ".gz"):
    if (root / candidate).is_file():
      return root / candidate
  raise FileNotFoundError(f"{root} holds no {SPLIT_FILES[split]} (or .gz) for split {split!r}")


def load_squad(path: str | os.PathLike, split: str = "train") -> dict:
  """The parsed SQuAD JSON of `squad_file(path, split)`, local or remote (etils.epath).

  Raises:
    ValueError: The file is not JSON (naming the file and line).
  """
  found = squad_file(path, split)
  raw = files.as_path(found).read_bytes()
  if os.fspath(found).endswith(".gz"):
    raw = gzip.decompress(raw)
  try:
    return json.loads(raw.decode("utf-8"))
  except json.JSONDecodeError as error:
    raise ValueError(f"{found}:{error.lineno}: not valid JSON ({error.msg})") from None


def load_reqa(path: str | os.PathLike = "squad", split: str = "train") -> ReqaData:
  """`ReqaData.from_squad` of `load_squad(path, split)`; `synthetic`: a generated file
  (`data.synthetic_wiki.synthetic_squad`, smoke runs)."""
  if str(path) == "synthetic":
    from retrieval_jax.data import synthetic_wiki  # pylint: disable=g-import-not-at-top
    return ReqaData.from_squad(synthetic_wiki.synthetic_squad(), source="synthetic")
  return ReqaData.from_squad(load_squad(path, split), source=str(squad_file(path, split)))
