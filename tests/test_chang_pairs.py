"""ICT, BFS and WLP pairs on a small hand-made article graph (data/chang_pairs.py)."""

import numpy as np
import pytest

from retrieval_jax.data import chang_pairs
from retrieval_jax.data.articles import Article, Paragraph, Section

CLS, SEP, PAD = 1, 2, 0


def _article(title, lead, body, links=(), lead_links=(), body_links=()):
  sections = [Section("", tuple(Paragraph(tuple(p), tuple(lead_links)) for p in lead))]
  if body:
    sections.append(Section("More", tuple(Paragraph(tuple(p), tuple(body_links)) for p in body)))
  return Article(title, tuple(sections), tuple(links))


# Every sentence is unique, so ids decode back to the sentence they came from.
ARTICLES = [
    _article("alpha", [["a0 lead one", "a0 lead two"]], [["a1 x", "a1 y", "a1 z"], ["a2 w"]]),
    # beta's second paragraph links to alpha; gamma links to alpha only at the article level.
    _article("beta", [["b0 lead"]], [["b1 p", "b1 q"]], links=("alpha",),
             body_links=("alpha",)),
    _article("gamma", [["g0 lead", "g0 more"]], [["g1 r"]], links=("alpha", "nowhere")),
    _article("delta", [["d0 single"]], []),
]


class WordTokenizer:
  def __init__(self):
    self.vocab = {}

  def __call__(self, texts):
    return [[self.vocab.setdefault(w, len(self.vocab) + 10) for w in t.split()] for t in texts]

  def decode(self, ids):
    words = {v: k for k, v in self.vocab.items()}
    return " ".join(words[i] for i in ids)


@pytest.fixture(scope="module")
def tokenizer():
  return WordTokenizer()


def _index(tokenizer, **kwargs):
  return chang_pairs.ArticleIndex(ARTICLES, tokenizer, **kwargs)


def _batcher(index, weights, *, title=True, batch=64, process_index=0, process_count=1, **kw):
  settings = chang_pairs.PairSettings(weights=weights, title=title,
                                      wlp_passage=kw.pop("wlp_passage", "linking"))
  return chang_pairs.ChangPairBatcher(
      index, settings, cls_id=CLS, sep_id=SEP, pad_id=PAD, global_batch=batch,
      query_max_length=kw.pop("query_max_length", 16), doc_max_length=kw.pop("doc_max_length", 32),
      seed=3, process_index=process_index, process_count=process_count, pad_to_multiple_of=4)


def _texts(tokenizer, ids, mask):
  """The text of each row without [CLS]/[SEP]/padding; the title split off at the [SEP]."""
  rows = []
  for row, m in zip(ids, mask):
    body = [int(t) for t in row[m > 0]]
    assert body[0] == CLS and body[-1] == SEP
    parts, current = [], []
    for t in body[1:-1]:
      if t == SEP:
        parts.append(current)
        current = []
      else:
        current.append(t)
    parts.append(current)
    rows.append([tokenizer.decode(p) for p in parts])
  return rows


def _sentences_of(article):
  return {s for p in article.paragraphs for s in p.sentences}


def _paragraph_of(text):
  for a, article in enumerate(ARTICLES):
    for p in article.paragraphs:
      if text == p.text:
        return a, p
  return None


def test_ict_query_is_removed_from_its_passage(tokenizer):
  batch = _batcher(_index(tokenizer), {"ict": 1}).batch(0)
  queries = _texts(tokenizer, batch["query_input_ids"], batch["query_attention_mask"])
  docs = _texts(tokenizer, batch["passage_input_ids"][:, 0], batch["passage_attention_mask"][:, 0])
  seen = set()
  for (query,), (title, rest) in zip(queries, docs):
    article = next(a for a in ARTICLES if a.title == title)
    paragraph = next(p for p in article.paragraphs if query in p.sentences)
    assert len(paragraph.sentences) >= 2
    assert rest == " ".join(s for s in paragraph.sentences if s != query)
    seen.add(query)
  assert len(seen) > 3  # not one pair repeated


def test_bfs_query_from_first_section_document_from_same_article(tokenizer):
  batch = _batcher(_index(tokenizer), {"bfs": 1}).batch(1)
  queries = _texts(tokenizer, batch["query_input_ids"], batch["query_attention_mask"])
  docs = _texts(tokenizer, batch["passage_input_ids"][:, 0], batch["passage_attention_mask"][:, 0])
  for (query,), (title, passage) in zip(queries, docs):
    article = next(a for a in ARTICLES if a.title == title)
    assert query in {s for p in article.sections[0].paragraphs for s in p.sentences}
    a, paragraph = _paragraph_of(passage)
    assert ARTICLES[a] is article
    assert query not in paragraph.sentences  # another passage than the query's own
  # delta has a single paragraph: no other passage, so never a BFS article.
  assert not any(title == "delta" for _, title in [(q, d[0]) for q, d in zip(queries, docs)])


@pytest.mark.parametrize("mode", ["linking", "any"])
def test_wlp_document_comes_from_an_article_linking_to_the_query_article(tokenizer, mode):
  index = _index(tokenizer, wlp_passage=mode)
  batch = _batcher(index, {"wlp": 1}, wlp_passage=mode).batch(2)
  queries = _texts(tokenizer, batch["query_input_ids"], batch["query_attention_mask"])
  docs = _texts(tokenizer, batch["passage_input_ids"][:, 0], batch["passage_attention_mask"][:, 0])
  sources = set()
  for (query,), (title, passage) in zip(queries, docs):
    assert query in {s for p in ARTICLES[0].sections[0].paragraphs for s in p.sentences}
    b, paragraph = _paragraph_of(passage)
    assert ARTICLES[b].title == title != "alpha"
    assert "alpha" in ARTICLES[b].links
    if mode == "linking":
      assert "alpha" in paragraph.links
    sources.add((title, passage))
  expected = {("beta", "b1 p b1 q")} if mode == "linking" else {
      ("beta", "b0 lead"), ("beta", "b1 p b1 q"), ("gamma", "g0 lead g0 more"), ("gamma", "g1 r")}
  assert sources == expected


def test_mixture_follows_the_weights(tokenizer):
  batcher = _batcher(_index(tokenizer), {"ict": 2, "bfs": 1, "wlp": 1}, batch=512)
  tasks = np.concatenate([batcher.batch(s)["task"] for s in range(8)])
  shares = np.bincount(tasks, minlength=3) / len(tasks)
  np.testing.assert_allclose(shares, [0.5, 0.25, 0.25], atol=0.03)


def test_batches_are_a_function_of_the_step_and_split_over_processes(tokenizer):
  index = _index(tokenizer)
  weights = {"ict": 1, "bfs": 1, "wlp": 1}
  whole = _batcher(index, weights, batch=8).batch(5)
  again = _batcher(index, weights, batch=8).batch(5)
  for key in whole:
    np.testing.assert_array_equal(whole[key], again[key])
  assert not np.array_equal(whole["query_input_ids"],
                            _batcher(index, weights, batch=8).batch(6)["query_input_ids"])
  halves = [_batcher(index, weights, batch=8, process_index=i, process_count=2).batch(5)
            for i in range(2)]
  for key in whole:  # same padded widths on both processes, rows in order
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_truncation_and_padding(tokenizer):
  batch = _batcher(_index(tokenizer), {"ict": 1}, title=False, query_max_length=3,
                   doc_max_length=4).batch(0)
  assert batch["query_input_ids"].shape[1] == 3 and batch["passage_input_ids"].shape[-1] == 4
  assert (batch["query_input_ids"][:, -1] == SEP).all()
  mask = batch["passage_attention_mask"][:, 0]
  ids = batch["passage_input_ids"][:, 0]
  assert (ids[mask.sum(1) == 4][:, 3] == SEP).all()


def test_position_and_changed_data_is_reported(tokenizer):
  batcher = _batcher(_index(tokenizer), {"ict": 1})
  batcher.check_position(batcher.position(7))
  other = chang_pairs.ChangPairBatcher(
      chang_pairs.ArticleIndex(ARTICLES[:3], tokenizer), batcher.settings, cls_id=CLS,
      sep_id=SEP, pad_id=PAD, global_batch=64, query_max_length=16, doc_max_length=32, seed=3)
  with pytest.raises(ValueError, match="articles"):
    other.check_position(batcher.position(7))


def test_bad_settings_are_named(tokenizer):
  with pytest.raises(ValueError, match="mlm"):
    chang_pairs.PairSettings(weights={"mlm": 1})
  with pytest.raises(ValueError, match="wlp_passage"):
    chang_pairs.PairSettings(weights={"ict": 1}, wlp_passage="nearby")
  no_links = chang_pairs.ArticleIndex(ARTICLES[3:], tokenizer)
  with pytest.raises(ValueError, match="'wlp' has no pairs"):
    chang_pairs.draw_pairs(no_links, chang_pairs.PairSettings(weights={"wlp": 1}), 0, 0, 4)
