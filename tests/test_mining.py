"""Tests for retrieval_jax.index.mining: BM25 negative pools and per-epoch sampling."""

import time

import numpy as np
import pytest

from retrieval_jax.data.beir import BeirData
from retrieval_jax.data.beir import load_beir
from retrieval_jax.index import BM25Index
from retrieval_jax.index import mining
from tests.helpers import write_tiny_beir

_WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega rho".split()


@pytest.fixture
def tiny(tmp_path):
  return load_beir(write_tiny_beir(tmp_path / "tiny"), "test", use_tfds=False)


@pytest.fixture(scope="module")
def synthetic():
  """200 random documents over a small vocabulary, 30 queries with 1-4 positives and a zero."""
  rng = np.random.default_rng(0)
  docs = [" ".join(rng.choice(_WORDS, rng.integers(3, 12))) for _ in range(200)]
  corpus_ids = [f"d{i}" for i in range(200)]
  query_ids = [f"q{i}" for i in range(30)]
  qrels = {}
  for query_id in query_ids:
    rows = rng.choice(200, rng.integers(2, 6), replace=False)
    qrels[query_id] = {corpus_ids[r]: 1 + int(r % 2) for r in rows[1:]}
    qrels[query_id][corpus_ids[rows[0]]] = 0  # Judged not relevant: a valid negative.
  texts = [" ".join(rng.choice(_WORDS, 3)) for _ in query_ids]
  return BeirData("synthetic", corpus_ids, [""] * 200, docs, query_ids, texts, qrels)


def _positive_ids(data, query_id):
  return {doc_id for doc_id, rel in data.qrels[query_id].items() if rel > 0}


def _assert_no_positives(data, negatives):
  for query_id, row in zip(data.query_ids, negatives):
    assert np.all(row >= 0)
    assert not {data.corpus_ids[r] for r in row} & _positive_ids(data, query_id)
    assert len(set(row.tolist())) == len(row)  # Without replacement.


def test_pool_is_bm25_ranking_without_positives(synthetic):
  pool = mining.bm25_negative_pool(synthetic, depth=20)
  assert pool.candidates.shape == (30, 20) and pool.candidates.dtype == np.int64
  _, ranked = BM25Index.build(synthetic.doc_strings()).search(synthetic.query_texts, 200)
  for q, query_id in enumerate(synthetic.query_ids):
    positives = _positive_ids(synthetic, query_id)
    expected = [r for r in ranked[q] if r >= 0 and synthetic.corpus_ids[r] not in positives][:20]
    np.testing.assert_array_equal(pool.candidates[q, :pool.counts[q]], expected)
    assert np.all(pool.candidates[q, pool.counts[q]:] == -1)


def test_judged_zero_documents_stay_candidates(synthetic):
  pool = mining.bm25_negative_pool(synthetic, depth=200)
  kept = 0
  for q, query_id in enumerate(synthetic.query_ids):
    zeros = {doc_id for doc_id, rel in synthetic.qrels[query_id].items() if rel == 0}
    rows = {synthetic.corpus_ids[r] for r in pool.candidates[q, :pool.counts[q]]}
    positive_rows = {synthetic.corpus_ids[r] for r in pool.positives[q] if r >= 0}
    assert positive_rows == _positive_ids(synthetic, query_id) and not rows & positive_rows
    kept += len(zeros & rows)
  assert kept > 10  # BM25 matches most of this small-vocabulary corpus, judged-zero ones included.


def test_pool_positives_are_the_data_positive_rows(synthetic):
  # One definition of a positive (`BeirData.positive_rows`), here padded with -1.
  pool = mining.bm25_negative_pool(synthetic, depth=5)
  for row, expected in zip(pool.positives, synthetic.positive_rows()):
    assert row[row >= 0].tolist() == expected.tolist() and np.all(row[len(expected):] == -1)


def test_no_positive_is_ever_sampled(synthetic, tiny):
  for data in (synthetic, tiny):
    pool = mining.bm25_negative_pool(data, depth=8)
    for seed in range(5):
      for epoch in range(10):
        for top_k in (None, 1, 3):
          _assert_no_positives(data, mining.sample_negatives(pool, 2, seed=seed, epoch=epoch,
                                                             top_k=top_k))


def test_same_seed_and_epoch_repeat_and_epochs_differ(synthetic):
  pool = mining.bm25_negative_pool(synthetic, depth=30)
  first = mining.sample_negatives(pool, 4, seed=7, epoch=0)
  np.testing.assert_array_equal(first, mining.sample_negatives(pool, 4, seed=7, epoch=0))
  assert not np.array_equal(first, mining.sample_negatives(pool, 4, seed=7, epoch=1))
  assert not np.array_equal(first, mining.sample_negatives(pool, 4, seed=8, epoch=0))


def test_samples_come_from_the_top_k(synthetic):
  pool = mining.bm25_negative_pool(synthetic, depth=30)
  negatives = mining.sample_negatives(pool, 3, seed=0, epoch=2, top_k=5)
  for q in range(30):
    if pool.counts[q] >= 5:
      assert set(negatives[q]) <= set(pool.candidates[q, :5])


def test_top_1_is_the_best_ranked_non_positive(synthetic, tiny):
  for data in (synthetic, tiny):
    pool = mining.bm25_negative_pool(data, depth=10)
    _, ranked = BM25Index.build(data.doc_strings()).search(data.query_texts,
                                                           len(data.corpus_ids))
    for epoch in range(3):
      top = mining.sample_negatives(pool, 1, seed=epoch, epoch=epoch, top_k=1)[:, 0]
      for q, query_id in enumerate(data.query_ids):
        positives = _positive_ids(data, query_id)
        best = [r for r in ranked[q] if r >= 0 and data.corpus_ids[r] not in positives]
        if best:
          assert top[q] == best[0]


def test_short_pools_are_filled_with_random_non_positives(tiny):
  # Tiny queries match one or two documents: the pool is short, the rest comes from the corpus.
  pool = mining.bm25_negative_pool(tiny, depth=5)
  assert np.any(pool.counts < 4)
  seen = set()
  for epoch in range(20):
    negatives = mining.sample_negatives(pool, 4, seed=0, epoch=epoch)
    _assert_no_positives(tiny, negatives)
    for q in range(len(tiny.query_ids)):
      # The mined candidates come first, then the random fill.
      assert set(negatives[q, :pool.counts[q]]) == set(pool.candidates[q, :pool.counts[q]])
      seen.add(tuple(negatives[q]))
  assert len(seen) > len(tiny.query_ids)  # The fill is resampled per epoch.
  # Five of the six documents are non-positive for q1: asking for six cannot be met.
  with pytest.raises(ValueError, match="only 5 non-positive documents, 6 negatives"):
    mining.sample_negatives(pool, 6, seed=0, epoch=0)


def test_rejection_fill_on_a_large_corpus():
  pool = mining.NegativePool(["q"], np.full((1, 3), -1, np.int64), np.zeros(1, np.int64),
                             np.array([[0, 1, 2]], np.int64), num_docs=1000)
  negatives = mining.sample_negatives(pool, 50, seed=1, epoch=0)
  assert len(set(negatives[0].tolist())) == 50 and negatives.min() >= 3 and negatives.max() < 1000


def test_save_load_round_trip(synthetic, tmp_path):
  pool = mining.bm25_negative_pool(synthetic, depth=12)
  mining.save_pool(tmp_path / "pool.npz", pool)
  loaded = mining.load_pool(tmp_path / "pool.npz")
  assert loaded.query_ids == pool.query_ids and loaded.num_docs == pool.num_docs
  for name in ("candidates", "counts", "positives"):
    np.testing.assert_array_equal(getattr(loaded, name), getattr(pool, name))
    assert getattr(loaded, name).dtype == np.int64
  np.testing.assert_array_equal(mining.sample_negatives(loaded, 3, seed=0, epoch=1),
                                mining.sample_negatives(pool, 3, seed=0, epoch=1))


def test_bad_arguments(tiny):
  with pytest.raises(ValueError, match="depth must be at least 1"):
    mining.bm25_negative_pool(tiny, depth=0)
  with pytest.raises(ValueError, match="index holds 4 documents"):
    mining.bm25_negative_pool(tiny, index=BM25Index.build(["cats", "dogs", "fish", "birds"]))
  pool = mining.bm25_negative_pool(tiny, depth=3)
  with pytest.raises(ValueError, match="num_negatives must be at least 1"):
    mining.sample_negatives(pool, 0, seed=0, epoch=0)
  with pytest.raises(ValueError, match="top_k must be at least 1"):
    mining.sample_negatives(pool, 1, seed=0, epoch=0, top_k=0)
  with pytest.raises(ValueError, match="non-negative"):
    mining.sample_negatives(pool, 1, seed=-1, epoch=0)


def test_scifact_train_pool(scifact_dir):
  data = load_beir(scifact_dir, "train_minus_dev", use_tfds=False)
  start = time.perf_counter()
  pool = mining.bm25_negative_pool(data, depth=100)
  seconds = time.perf_counter() - start
  print(f"SciFact train_minus_dev: {len(data.query_ids)} queries, {len(data.corpus_ids)} docs, "
        f"BM25 mining (index + search) {seconds:.1f} s")
  assert pool.candidates.shape == (len(data.query_ids), 100)
  assert np.median(pool.counts) == 100
  for epoch in range(3):
    _assert_no_positives(data, mining.sample_negatives(pool, 2, seed=0, epoch=epoch))
  _assert_no_positives(data, mining.sample_negatives(pool, 1, seed=0, epoch=0, top_k=1))


# --- dense (ANCE) pools ----------------------------------------------------------------------------


def _dense_setup(num_docs=1500, num_queries=40, dim=32, seed=0):
  """Random unit embeddings; each query sits near its 1-2 positive documents."""
  rng = np.random.default_rng(seed)
  corpus = rng.normal(size=(num_docs, dim)).astype(np.float32)
  corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
  qrels, queries = {}, []
  for q in range(num_queries):
    positives = rng.choice(num_docs, rng.integers(1, 3), replace=False)
    qrels[f"q{q}"] = {f"d{d}": 1 for d in positives}
    queries.append(corpus[positives].mean(0) + 0.3 * rng.normal(size=dim))
  data = BeirData(name="dense", corpus_ids=[f"d{i}" for i in range(num_docs)],
                  corpus_titles=[""] * num_docs, corpus_texts=["x"] * num_docs,
                  query_ids=list(qrels), query_texts=["q"] * num_queries, qrels=qrels)
  return data, np.asarray(queries, np.float32), corpus


def _positive_sets(data):
  return [{int(d[1:]) for d in data.qrels[q]} for q in data.query_ids]


def test_dense_pool_exhaustive_scann_equals_exact():
  data, queries, corpus = _dense_setup()
  exact = mining.dense_negative_pool(queries, corpus, data, depth=20, index="exact")
  exhaustive = mining.ScannConfig(num_leaves=10, num_leaves_to_search=10, reorder_k=len(corpus))
  approximate = mining.dense_negative_pool(queries, corpus, data, depth=20, index="scann",
                                           scann_config=exhaustive)
  np.testing.assert_array_equal(approximate.candidates, exact.candidates)
  np.testing.assert_array_equal(exact.counts, 20)
  # And exact mining is the NumPy ranking minus the positives.
  for row, positives in enumerate(_positive_sets(data)):
    ranking = [d for d in np.argsort(-(corpus @ queries[row]), kind="stable")
               if d not in positives][:20]
    np.testing.assert_array_equal(exact.candidates[row], ranking)


def test_dense_pool_never_holds_a_positive_and_margin_drops_near_positives():
  data, queries, corpus = _dense_setup(num_docs=300)
  pool = mining.dense_negative_pool(queries, corpus, data, depth=50, index="exact")
  guarded = mining.dense_negative_pool(queries, corpus, data, depth=50, index="exact",
                                       false_negative_margin=0.1)
  for row, positives in enumerate(_positive_sets(data)):
    assert not positives & set(pool.candidates[row].tolist())
    best = max(float(corpus[d] @ queries[row]) for d in positives)
    kept = guarded.candidates[row][:guarded.counts[row]]
    assert np.all(corpus[kept] @ queries[row] <= best - 0.1 + 1e-6)
    dropped = [d for d in pool.candidates[row] if corpus[d] @ queries[row] > best - 0.1]
    assert not set(dropped) & set(kept.tolist())
  assert guarded.counts.sum() < pool.counts.sum()  # the margin did drop something


def test_dense_pool_errors():
  data, queries, corpus = _dense_setup(num_docs=300)
  with pytest.raises(ValueError, match="do not match"):
    mining.dense_negative_pool(queries[:-1], corpus, data)
  with pytest.raises(ValueError, match="index"):
    mining.dense_negative_pool(queries, corpus, data, index="faiss")
  with pytest.raises(ValueError, match="depth"):
    mining.dense_negative_pool(queries, corpus, data, depth=0)


def test_dense_pool_over_passages_is_maxp_and_scann_equals_exact():
  """MaxP mining: documents ranked by their best passage, positives' passages never returned;
  exhaustive ScaNN over the passages gives the same pool as exact search."""
  data, queries, corpus = _dense_setup(num_docs=600)
  rng = np.random.default_rng(1)
  per_doc = rng.integers(1, 4, len(corpus))                       # 1-3 passages per document
  passage_doc = np.repeat(np.arange(len(corpus)), per_doc)
  passages = corpus[passage_doc] + 0.5 * rng.normal(size=(len(passage_doc), corpus.shape[1]))
  passages = (passages / np.linalg.norm(passages, axis=1, keepdims=True)).astype(np.float32)
  exact = mining.dense_negative_pool(queries, passages, data, depth=20, index="exact",
                                     passage_doc=passage_doc)
  exhaustive = mining.ScannConfig(num_leaves=10, num_leaves_to_search=10,
                                  reorder_k=len(passages))
  approximate = mining.dense_negative_pool(queries, passages, data, depth=20, index="scann",
                                           scann_config=exhaustive, passage_doc=passage_doc)
  np.testing.assert_array_equal(approximate.candidates, exact.candidates)
  for row, positives in enumerate(_positive_sets(data)):
    doc_scores = np.full(len(corpus), -np.inf)
    np.maximum.at(doc_scores, passage_doc, passages @ queries[row])
    ranking = [d for d in np.argsort(-doc_scores, kind="stable") if d not in positives][:20]
    np.testing.assert_array_equal(exact.candidates[row], ranking)
