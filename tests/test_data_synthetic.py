"""retrieval_jax.data.synthetic: the in-memory data set of smoke runs."""

import pytest

from retrieval_jax.data import synthetic


def test_splits_partition_the_queries_and_queries_come_from_their_document():
  train = synthetic.synthetic_beir("train")
  dev = synthetic.synthetic_beir("dev")
  rest = synthetic.synthetic_beir("train_minus_dev")
  assert set(dev.query_ids).isdisjoint(rest.query_ids)
  assert sorted(dev.query_ids + rest.query_ids) == sorted(train.query_ids)
  assert dev.query_ids and rest.query_ids
  assert synthetic.synthetic_beir("test").query_ids == dev.query_ids
  for query_id, text in zip(train.query_ids, train.query_texts):
    (doc_id,) = train.qrels[query_id]
    document = train.corpus_texts[train.corpus_ids.index(doc_id)].split()
    assert set(text.split()) <= set(document)


def test_deterministic_per_seed():
  assert synthetic.synthetic_beir(seed=1) == synthetic.synthetic_beir(seed=1)
  assert synthetic.synthetic_beir(seed=1).corpus_texts != synthetic.synthetic_beir(
      seed=2).corpus_texts


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="validation"), "splits"),
    (dict(num_queries=10, num_docs=5), "num_queries"),
    (dict(query_words=30), "query_words"),
    (dict(split="dev", num_queries=1, num_docs=1, dev_fraction=0.01), "empty"),
])
def test_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.synthetic_beir(**kwargs)
