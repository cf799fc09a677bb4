"""Chang et al. 2020's pre-training pairs from articles with links: ICT, BFS, WLP, their mix.

The tasks (paper, Section 3; a passage is a paragraph of `data.articles`):
  ict  query: a sentence of a passage; document: the rest of that passage (query removed).
  bfs  query: a sentence of an article's first section; document: another passage of the
       same article (`bfs_other_passage`: never the query's own, which would make BFS an ICT
       that keeps its query; the paper's "a random passage in the same page" leaves it open).
  wlp  query: a sentence of the first section of article A; document: a passage of another
       article B that links to A (`wlp_passage="linking"`: a paragraph of B whose own links
       hold A; `"any"`: any paragraph of an article whose links hold A).
A document is `[CLS] title [SEP] passage [SEP]` (`title=True`: its article's title, as the
paper's (title, passage) documents) or `[CLS] passage [SEP]`; a query `[CLS] sentence [SEP]`;
each truncated to its length.

Every sentence is tokenised once (`ArticleIndex`); documents are joins of sentence ids, so the
global batch's lengths come from cumulative sums without tokenising again. Batch `step` is a
pure function of (seed, step): one generator per step draws the task, anchor and positions of
every row of the global batch (vectorised, identical on every process); each process then
builds only its rows. Resuming at a step therefore yields exactly the uninterrupted batches.
No JAX here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from retrieval_jax.data import articles as articles_lib
from retrieval_jax.data import pairs
from retrieval_jax.data import tokenize as tok

TASKS = ("ict", "bfs", "wlp")
WLP_PASSAGES = ("linking", "any")
_STREAM = 11  # purpose tag after [seed, step] (never 0: see data/pairs.py)
POSITION_FIELDS = ("step", "examples_seen", "articles", "sentences")


@dataclasses.dataclass(frozen=True)
class PairSettings:
  """Which tasks, in which proportions, and how documents are formed.

  Attributes:
    weights: Task -> sampling weight (normalised); e.g. {"ict": 1, "bfs": 1, "wlp": 1}.
    title: Prefix each document with its article's title.
    bfs_other_passage: BFS documents never are the query's own paragraph.
    wlp_passage: `linking` or `any` (module docstring).
  """
  weights: Mapping[str, float]
  title: bool = True
  bfs_other_passage: bool = True
  wlp_passage: str = "linking"

  def __post_init__(self):
    unknown = sorted(set(self.weights) - set(TASKS))
    if unknown or not self.weights:
      raise ValueError(f"tasks {unknown or '(none)'}: choose from {TASKS}")
    if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
      raise ValueError(f"task weights {dict(self.weights)} must be >= 0 with a positive sum")
    if self.wlp_passage not in WLP_PASSAGES:
      raise ValueError(f"wlp_passage={self.wlp_passage!r} is not one of {WLP_PASSAGES}")

  def probabilities(self) -> np.ndarray:
    """[3] probabilities in `TASKS` order."""
    w = np.array([float(self.weights.get(t, 0.0)) for t in TASKS])
    return w / w.sum()


def _csr(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """(offsets [n + 1], values) of a list of int lists."""
  lengths = np.array([len(x) for x in lists], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  values = (np.concatenate([np.asarray(x, np.int64) for x in lists if len(x)])
            if lengths.sum() else np.zeros(0, np.int64))
  return offsets, values


class ArticleIndex:
  """Every sentence's token ids and the anchors each task samples from.

  Sentences are numbered in article order, so a paragraph is a range of sentences and an
  article's first section is a range starting at its first sentence.
  """

  def __init__(self, articles: Sequence[articles_lib.Article],
               tokenize: Callable[[list[str]], list[list[int]]], *,
               wlp_passage: str = "linking", bfs_other_passage: bool = True):
    """`tokenize`: texts -> token ids without special tokens (e.g. a HF tokenizer's
    `add_special_tokens=False` call)."""
    texts, para_article, para_start, para_count = [], [], [], []
    lead_start, lead_count, first_para, num_paras = [], [], [], []
    for a, article in enumerate(articles):
      lead_start.append(len(texts))
      first_para.append(len(para_start))
      lead = 0
      for s, section in enumerate(article.sections):
        for paragraph in section.paragraphs:
          if not paragraph.sentences:
            continue
          para_article.append(a)
          para_start.append(len(texts))
          para_count.append(len(paragraph.sentences))
          texts.extend(paragraph.sentences)
          if s == 0:
            lead += len(paragraph.sentences)
      lead_count.append(lead)
      num_paras.append(len(para_start) - first_para[-1])
    if not texts:
      raise ValueError("the articles hold no sentences")
    self.num_articles = len(articles)
    self.sentence_ids = [np.asarray(ids, np.int32) for ids in tokenize(texts)]
    lengths = np.array([len(ids) for ids in self.sentence_ids], np.int64)
    self.length_cumsum = np.concatenate([[0], np.cumsum(lengths)])
    self.title_ids = [np.asarray(ids, np.int32)
                      for ids in tokenize([article.title for article in articles])]
    self.para_article = np.asarray(para_article, np.int64)
    self.para_start = np.asarray(para_start, np.int64)
    self.para_count = np.asarray(para_count, np.int64)
    self.lead_start = np.asarray(lead_start, np.int64)
    self.lead_count = np.asarray(lead_count, np.int64)
    self.first_para = np.asarray(first_para, np.int64)
    self.num_paras = np.asarray(num_paras, np.int64)
    self.bfs_other_passage = bfs_other_passage
    self.ict_paragraphs = np.flatnonzero(self.para_count >= 2)
    min_paras = 2 if bfs_other_passage else 1
    self.bfs_articles = np.flatnonzero((self.lead_count > 0) & (self.num_paras >= min_paras))
    self.wlp_offsets, self.wlp_paragraphs = _csr(self._linking_paragraphs(articles, wlp_passage))
    has_links = np.diff(self.wlp_offsets) > 0
    self.wlp_articles = np.flatnonzero((self.lead_count > 0) & has_links)

  @property
  def num_sentences(self) -> int:
    return len(self.sentence_ids)

  def _linking_paragraphs(self, articles, wlp_passage: str) -> list[list[int]]:
    """For each article A, the paragraphs (of other articles) that may be its WLP document."""
    titles = articles_lib.by_title(articles)
    incoming: list[list[int]] = [[] for _ in articles]
    para = 0
    for b, article in enumerate(articles):
      paragraphs = [p for s in article.sections for p in s.paragraphs if p.sentences]
      ids = range(para, para + len(paragraphs))
      para += len(paragraphs)
      if wlp_passage == "any":
        for a in {titles[t] for t in article.links if t in titles} - {b}:
          incoming[a].extend(ids)
        continue
      for pid, paragraph in zip(ids, paragraphs):
        for a in {titles[t] for t in paragraph.links if t in titles} - {b}:
          incoming[a].append(pid)
    return incoming

  def available(self) -> dict[str, int]:
    """Task -> number of anchors it samples from (paragraphs for ICT, articles otherwise)."""
    return {"ict": len(self.ict_paragraphs), "bfs": len(self.bfs_articles),
            "wlp": len(self.wlp_articles)}

  def sentences(self, start: int, stop: int, skip: int = -1) -> np.ndarray:
    """The ids of sentences [start, stop) joined, without sentence `skip`."""
    return np.concatenate([self.sentence_ids[i] for i in range(start, stop) if i != skip]
                          or [np.zeros(0, np.int32)])


@dataclasses.dataclass(frozen=True)
class Draw:
  """The global batch's pairs: task, query sentence, document paragraph, skipped sentence."""
  task: np.ndarray       # [B] index into TASKS
  query: np.ndarray      # [B] sentence
  paragraph: np.ndarray  # [B] document paragraph
  skip: np.ndarray       # [B] sentence removed from the document (ICT), else -1


def _pick(values: np.ndarray, u: np.ndarray) -> np.ndarray:
  """values[floor(u * len(values))] for uniforms u in [0, 1)."""
  return values[np.minimum((u * len(values)).astype(np.int64), len(values) - 1)]


def draw_pairs(index: ArticleIndex, settings: PairSettings, seed: int, step: int,
               size: int) -> Draw:
  """The pairs of global batch `step` (a pure function of its arguments)."""
  rng = np.random.default_rng([seed, step, _STREAM])
  probabilities = settings.probabilities()
  available = index.available()
  for t, name in enumerate(TASKS):
    if probabilities[t] > 0 and not available[name]:
      raise ValueError(f"task {name!r} has no pairs in these articles (ict needs paragraphs "
                       "of 2+ sentences, bfs a first section and another paragraph, wlp "
                       "an article that others link to)")
  task = rng.choice(len(TASKS), size=size, p=probabilities)
  u = rng.random((3, size))
  query = np.zeros(size, np.int64)
  paragraph = np.zeros(size, np.int64)
  skip = np.full(size, -1, np.int64)
  rows = task == 0
  if rows.any():  # ICT: a paragraph, one of its sentences out
    p = _pick(index.ict_paragraphs, u[0, rows])
    q = index.para_start[p] + np.minimum((u[1, rows] * index.para_count[p]).astype(np.int64),
                                         index.para_count[p] - 1)
    query[rows], paragraph[rows], skip[rows] = q, p, q
  rows = task == 1
  if rows.any():  # BFS: a lead sentence, another paragraph of the article
    a = _pick(index.bfs_articles, u[0, rows])
    q = index.lead_start[a] + np.minimum((u[1, rows] * index.lead_count[a]).astype(np.int64),
                                         index.lead_count[a] - 1)
    own = np.searchsorted(index.para_start, q, side="right") - 1
    if index.bfs_other_passage:
      k = np.minimum((u[2, rows] * (index.num_paras[a] - 1)).astype(np.int64),
                     index.num_paras[a] - 2)
      p = index.first_para[a] + k
      p = np.where(p >= own, p + 1, p)  # skip the query's own paragraph
    else:
      p = index.first_para[a] + np.minimum((u[2, rows] * index.num_paras[a]).astype(np.int64),
                                           index.num_paras[a] - 1)
    query[rows], paragraph[rows] = q, p
  rows = task == 2
  if rows.any():  # WLP: a lead sentence of A, a paragraph of B that links to A
    a = _pick(index.wlp_articles, u[0, rows])
    q = index.lead_start[a] + np.minimum((u[1, rows] * index.lead_count[a]).astype(np.int64),
                                         index.lead_count[a] - 1)
    start, count = index.wlp_offsets[a], np.diff(index.wlp_offsets)[a]
    k = np.minimum((u[2, rows] * count).astype(np.int64), count - 1)
    query[rows], paragraph[rows] = q, index.wlp_paragraphs[start + k]
  return Draw(task.astype(np.int64), query, paragraph, skip)


class ChangPairBatcher:
  """Process-local (query, document) batches of the tasks' pairs, by global step.

  Batch layout as `data.pairs.PairBatcher` with no hard negatives (passages [b, 1, Lp]); the
  other rows of the global batch are the negatives (the paper's sampled softmax over the batch).
  """
  host_keys = frozenset({"task"})

  def __init__(self, index: ArticleIndex, settings: PairSettings, *, cls_id: int, sep_id: int,
               pad_id: int, global_batch: int, query_max_length: int, doc_max_length: int,
               seed: int, process_index: int = 0, process_count: int = 1,
               pad_to_multiple_of: int = 32):
    if global_batch % process_count:
      raise ValueError(f"train.batch_size={global_batch} must divide over {process_count} "
                       "processes")
    for name, length in (("query", query_max_length), ("document", doc_max_length)):
      if length < 3 + (name == "document" and settings.title):
        raise ValueError(f"{name} max length {length} leaves no room for text")
    self.index, self.settings = index, settings
    self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
    self.global_batch, self.seed = global_batch, seed
    self.query_max_length, self.doc_max_length = query_max_length, doc_max_length
    self.pad_to_multiple_of = pad_to_multiple_of
    per_process = global_batch // process_count
    self.rows = slice(process_index * per_process, (process_index + 1) * per_process)
    # Nominal: pairs are drawn with replacement, so an epoch is one pass's worth of paragraphs.
    self._steps_per_epoch = max(1, -(-len(index.para_start) // global_batch))

  @property
  def steps_per_epoch(self) -> int:
    return self._steps_per_epoch

  def query_ids(self, sentence: int) -> np.ndarray:
    body = self.index.sentence_ids[sentence][:self.query_max_length - 2]
    return np.concatenate([[self.cls_id], body, [self.sep_id]]).astype(np.int32)

  def document_ids(self, paragraph: int, skip: int = -1) -> np.ndarray:
    index = self.index
    start = index.para_start[paragraph]
    body = index.sentences(start, start + index.para_count[paragraph], skip)
    if self.settings.title:
      title = index.title_ids[index.para_article[paragraph]]
      body = np.concatenate([title, [self.sep_id], body])
    body = body[:self.doc_max_length - 2]
    return np.concatenate([[self.cls_id], body, [self.sep_id]]).astype(np.int32)

  def _lengths(self, draw: Draw) -> tuple[int, int]:
    """Padded (query, document) lengths of the whole global batch (same on every process)."""
    index = self.index
    cumsum = index.length_cumsum
    query = cumsum[draw.query + 1] - cumsum[draw.query] + 2
    start = index.para_start[draw.paragraph]
    doc = cumsum[start + index.para_count[draw.paragraph]] - cumsum[start] + 2
    doc = doc - np.where(draw.skip >= 0, cumsum[draw.skip + 1] - cumsum[draw.skip], 0)
    if self.settings.title:
      doc = doc + np.array([len(index.title_ids[a]) + 1
                            for a in index.para_article[draw.paragraph]])
    return (tok.padded_length(int(query.max()), self.pad_to_multiple_of, self.query_max_length),
            tok.padded_length(int(doc.max()), self.pad_to_multiple_of, self.doc_max_length))

  def batch(self, step: int) -> dict[str, np.ndarray]:
    draw = draw_pairs(self.index, self.settings, self.seed, step, self.global_batch)
    query_width, doc_width = self._lengths(draw)
    rows = range(self.global_batch)[self.rows]
    query_ids, query_mask = pairs.pad_rows([self.query_ids(draw.query[r]) for r in rows],
                                           query_width, self.pad_id)
    doc_ids, doc_mask = pairs.pad_rows(
        [self.document_ids(draw.paragraph[r], draw.skip[r]) for r in rows], doc_width,
        self.pad_id)
    return {"query_input_ids": query_ids, "query_attention_mask": query_mask,
            "passage_input_ids": doc_ids[:, None], "passage_attention_mask": doc_mask[:, None],
            "task": draw.task[self.rows].astype(np.int32)}

  def position(self, step: int) -> dict[str, int]:
    """The data position after `step` steps (JSON, saved in checkpoints)."""
    return {"step": int(step), "examples_seen": int(step) * self.global_batch,
            "articles": self.index.num_articles, "sentences": self.index.num_sentences}

  def check_position(self, position: Mapping[str, int]) -> None:
    pairs.check_position_fields(
        position, self.position, POSITION_FIELDS,
        lambda expected: (f"(train.batch_size {self.global_batch}, {expected['articles']} "
                          f"articles); did the batch size or the articles change?"))

  def iterate(self, start_step: int, end_step: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(step, batch) for step in [start_step, end_step), the next built in a thread."""
    return pairs.prefetched_batches(self.batch, start_step, end_step, "chang_batches")
