"""Tests for retrieval_jax.evaluation: FirstP unchanged, MaxP (ANCE) documents, exact vs ScaNN."""

import json

import numpy as np
import pytest

from configs import common
from retrieval_jax import encode, evaluation, metrics
from retrieval_jax.data import passages
from retrieval_jax.data.beir import BeirData, load_beir
from retrieval_jax.index import ScannConfig, exact_search
from tests import helpers


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return encode.load_encoder(minilm_dir)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_dir):
  """A random 2-layer BERT with MiniLM's tokenizer: fast, and its embeddings are not clustered
  by meaning, so near-ties are rare."""
  model_dir, _, _ = helpers.write_tiny_bert(tmp_path_factory.mktemp("bert") / "model", minilm_dir)
  return encode.load_encoder(model_dir)


@pytest.fixture
def tiny(tmp_path):
  return load_beir(helpers.write_tiny_beir(tmp_path / "tiny"), "test", use_tfds=False)


def _settings(**overrides):
  return evaluation.EvalSettings(**{"index": "exact", "depth": 5, "batch_size": 8,
                                    "progress": False, **overrides})


def test_max_passages_is_validated():
  with pytest.raises(ValueError, match="max_passages"):
    evaluation.EvalSettings(max_passages=0)


def test_retrieval_entry_settings_read_max_passages():
  from retrieval_jax.evaluators import retrieval  # pylint: disable=g-import-not-at-top

  entry = common.retrieval_eval()
  assert retrieval.settings(entry).max_passages == 1  # The default: FirstP.
  entry.max_passages = 4
  assert retrieval.settings(entry).max_passages == 4


def test_firstp_is_the_plain_pipeline(tiny, minilm):
  """max_passages=1 (the default) is encode_texts -> exact top-k -> run, bit for bit."""
  result = evaluation.evaluate_retrieval(tiny, _settings(max_passages=1), minilm)
  queries = encode.encode_texts(minilm, tiny.query_texts, max_length=256, batch_size=8,
                                progress=False)
  corpus = encode.encode_texts(minilm, tiny.doc_strings(), max_length=256, batch_size=8,
                               progress=False)
  run = metrics.run_from_topk(tiny.query_ids, tiny.corpus_ids, *exact_search(queries, corpus, 5))
  assert result.run == run
  assert result.metrics == metrics.evaluate(tiny.qrels, run, evaluation.DEFAULT_METRICS)
  assert "num_passages" not in result.extra


def test_maxp_of_one_passage_documents_equals_firstp(tiny, minilm):
  """Documents that fit in one passage: MaxP's passages are FirstP's documents."""
  firstp = evaluation.evaluate_retrieval(tiny, _settings(), minilm)
  maxp = evaluation.evaluate_retrieval(tiny, _settings(max_passages=4), minilm)
  assert maxp.extra["num_passages"] == len(tiny.corpus_ids)
  assert maxp.run == firstp.run and maxp.metrics == firstp.metrics


# Each filler is longer than one 16-token passage, so the answer starts in the second passage.
_LONG = {
    "tides": ("The city council approved the annual budget for roads, parks and public schools "
              "on Monday.", "Ocean tides are caused by the gravitational pull of the moon."),
    "volcano": ("The quarterly report of the railway company lists ticket sales, staff costs "
                "and repairs.", "Volcanoes erupt when pressure from rising magma breaks the rock."),
    "vaccine": ("Our family recipe for apple pie needs butter, flour, sugar and a pinch of "
                "cinnamon.", "Vaccines protect against disease by training the immune system."),
}
# Near the queries' topics, so that FirstP (which sees only the fillers) ranks them higher.
_DISTRACTORS = {
    "moon": "The moon orbits the Earth about once every 27 days.",
    "etna": "Mount Etna is a tall mountain on the island of Sicily.",
    "clinic": "Hospitals and clinics treat patients who have infections.",
    "river": "The Nile and the Amazon are the two longest rivers on Earth.",
}
_QUERIES = {"tides": "what causes ocean tides", "volcano": "why do volcanoes erupt",
            "vaccine": "how do vaccines protect against disease"}


def _long_documents() -> BeirData:
  docs = {doc: f"{filler} {answer}" for doc, (filler, answer) in _LONG.items()}
  docs.update(_DISTRACTORS)
  return BeirData("long", list(docs), [""] * len(docs), list(docs.values()), list(_QUERIES),
                  list(_QUERIES.values()), {q: {q: 1} for q in _QUERIES})


def test_maxp_finds_an_answer_in_the_second_passage(minilm):
  data = _long_documents()
  tokenizer = minilm.tokenizer
  for filler, answer in _LONG.values():  # The setup this test relies on.
    assert len(tokenizer(filler, add_special_tokens=False)["input_ids"]) >= 16 - 2
    token_ids, _ = passages.split_documents(tokenizer, [f"{filler} {answer}"], 16, 4)
    first = tokenizer.decode(token_ids[0])
    assert answer.split()[0].lower() not in first and len(token_ids) >= 2
  firstp = evaluation.evaluate_retrieval(data, _settings(max_length=16), minilm)
  maxp = evaluation.evaluate_retrieval(data, _settings(max_length=16, max_passages=4), minilm)
  assert maxp.extra["num_passages"] == len(
      passages.split_documents(tokenizer, data.doc_strings(), 16, 4)[0])
  for query in _QUERIES:
    assert max(maxp.run[query], key=maxp.run[query].get) == query  # Found first by MaxP...
    assert max(firstp.run[query], key=firstp.run[query].get) != query  # ...missed by FirstP.
  assert maxp.metrics["mrr@10"] == pytest.approx(1.0)
  assert firstp.metrics["mrr@10"] < 0.75


def _random_corpus(num_docs=400, num_queries=20, seed=0) -> BeirData:
  """Random-word documents of 1 to 5 passages of 16 tokens (over 1,000 passages in all, so
  ScaNN trains a tree rather than falling back to brute force)."""
  rng = np.random.default_rng(seed)
  words = ("river mountain protein galaxy engine violin harbour glacier insulin comet desert "
           "orchard lantern copper falcon meadow tunnel quartz saddle thunder").split()
  texts = [" ".join(rng.choice(words, rng.integers(1, 70))) for _ in range(num_docs)]
  queries = [" ".join(rng.choice(words, 4)) for _ in range(num_queries)]
  qrels = {f"q{q}": {f"d{d}": 1 for d in rng.choice(num_docs, 3, replace=False)}
           for q in range(num_queries)}
  return BeirData("random", [f"d{i}" for i in range(num_docs)], [""] * num_docs, texts,
                  list(qrels), queries, qrels)


def _assert_same_ranking(approximate, exact, atol=1e-5):
  """Same documents with the same scores; a swap is allowed only among near-equal scores."""
  for query, docs in exact.items():
    other = approximate[query]
    cutoff = min(docs.values())
    for doc in set(docs) | set(other):
      if doc in docs and doc in other:
        assert other[doc] == pytest.approx(docs[doc], abs=atol)
      else:  # In one top-k only: it must tie with the last place.
        assert abs(docs.get(doc, other.get(doc)) - cutoff) <= atol, (query, doc)


def test_exhaustive_scann_maxp_equals_exact_maxp(tiny_bert, tmp_path):
  data = _random_corpus()
  num_passages = len(passages.split_documents(tiny_bert.tokenizer, data.doc_strings(), 16, 4)[0])
  assert num_passages > 1000
  exhaustive = ScannConfig(num_leaves=10, num_leaves_to_search=10, reorder_k=num_passages)
  common_settings = {"max_length": 16, "max_passages": 4, "depth": 20, "batch_size": 64}
  exact = evaluation.evaluate_retrieval(data, _settings(**common_settings), tiny_bert)
  scann = evaluation.evaluate_retrieval(
      data, _settings(index="scann", scann=exhaustive, check_exact=True, save_embeddings=True,
                      **common_settings), tiny_bert, tmp_path / "out")
  assert exact.extra["num_passages"] == scann.extra["num_passages"] == num_passages
  assert scann.extra["scann_overlap@10"] == 1.0
  assert all(len(docs) == 20 for docs in exact.run.values())  # 20 distinct documents each.
  _assert_same_ranking(scann.run, exact.run)
  for name, value in exact.metrics.items():
    assert scann.metrics[name] == pytest.approx(value, abs=1e-6), name
  # MaxP saves passage embeddings with their documents, and reports the passage count.
  out = tmp_path / "out"
  doc_of = np.load(out / "passage_doc_of.npy")
  assert np.load(out / "passage_embeddings.npy").shape[0] == len(doc_of) == num_passages
  assert not (out / "corpus_embeddings.npy").exists()
  assert json.loads((out / "metrics.json").read_text())["num_passages"] == num_passages


def test_maxp_documents_score_their_best_passage(tiny_bert):
  """Every document score in the run is the max over its passages' inner products."""
  data = _random_corpus(num_docs=60, num_queries=5, seed=1)
  result = evaluation.evaluate_retrieval(
      data, _settings(max_length=16, max_passages=3, depth=60), tiny_bert)
  token_ids, doc_of = passages.split_documents(tiny_bert.tokenizer, data.doc_strings(), 16, 3)
  passage_emb = encode.encode_token_ids(tiny_bert, token_ids, max_length=16, progress=False)
  query_emb = encode.encode_texts(tiny_bert, data.query_texts, max_length=16, progress=False)
  scores = query_emb @ passage_emb.T
  for q, query in enumerate(data.query_ids):
    best = {f"d{d}": scores[q, doc_of == d].max() for d in range(60)}
    assert set(result.run[query]) == set(best)  # depth = corpus: every document once.
    for doc, score in result.run[query].items():
      assert score == pytest.approx(best[doc], abs=1e-5)
