r"""Our retrieval stack against the references on SciFact: the numbers behind the README claims.

For the train split and the dev split carved from it:
  * nDCG@10 of our encoder (exact search) vs sentence-transformers embeddings (PyTorch) of the
    same checkpoint, scored by the same pytrec_eval call;
  * nDCG@10 of our BM25Index vs bm25s called directly with the same settings;
  * the overlap of ScaNN's default top-10 with the exact top-10.

  python eval/parity_scifact.py --out=/tmp/parity.json [--limit_queries=N]

Needs torch and sentence-transformers (the `bench` extra). Slow on CPU: both models embed the
whole corpus.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags():
  """Flags live here, not at import, so tests can import `compare` beside other CLIs."""
  flags.DEFINE_string("data", "scifact", "BEIR directory or name.")
  flags.DEFINE_string("model", "minilm", "Model (must be a sentence-transformers directory).")
  flags.DEFINE_integer("max_length", 256, "Token cap for queries and documents.")
  flags.DEFINE_integer("batch_size", 64, "Encoding batch size for both models.")
  flags.DEFINE_integer("limit_docs", None, "Use only the first N documents (quick checks).")
  flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _subset(data, query_ids):
  """The same BeirData restricted to some queries."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  keep = [i for i, q in enumerate(data.query_ids) if q in query_ids]
  return dataclasses.replace(data, query_ids=[data.query_ids[i] for i in keep],
                             query_texts=[data.query_texts[i] for i in keep],
                             qrels={q: data.qrels[q] for q in data.query_ids if q in query_ids})


def _limit(data, limit_docs):
  """Keep the first N documents and the queries that still have a relevant one."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  if not limit_docs:
    return data
  docs = set(data.corpus_ids[:limit_docs])
  qrels = {q: {d: r for d, r in rel.items() if d in docs} for q, rel in data.qrels.items()}
  qrels = {q: rel for q, rel in qrels.items() if rel}
  data = dataclasses.replace(data, corpus_ids=data.corpus_ids[:limit_docs],
                             corpus_titles=data.corpus_titles[:limit_docs],
                             corpus_texts=data.corpus_texts[:limit_docs], qrels=qrels)
  return _subset(data, set(qrels))


def compare(data_name: str = "scifact", model: str = "minilm", max_length: int = 256,
            batch_size: int = 64, limit_docs: int | None = None) -> dict:
  """Runs every comparison; returns {split: {measure: value}}."""
  import bm25s  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import Stemmer  # pylint: disable=g-import-not-at-top
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top

  from retrieval_jax import encode, evaluation, metrics  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import beir  # pylint: disable=g-import-not-at-top
  from retrieval_jax.index import BM25Index, ScannIndex, exact_search  # pylint: disable=g-import-not-at-top

  train = _limit(beir.load_beir(data_name, "train"), limit_docs)
  dev_ids = beir.carve_dev(train.query_ids)
  docs = train.doc_strings()
  timings = {}

  start = time.perf_counter()
  ours = encode.load_encoder(model)
  ours_q = encode.encode_texts(ours, train.query_texts, max_length=max_length,
                               batch_size=batch_size, desc="ours queries")
  ours_d = encode.encode_texts(ours, docs, max_length=max_length, batch_size=batch_size,
                               desc="ours corpus")
  timings["ours_encode_s"] = time.perf_counter() - start

  start = time.perf_counter()
  reference = SentenceTransformer(str(ours.model_dir), device="cpu")
  reference.max_seq_length = max_length
  normalize = ours.pooling.normalize
  ref_q = reference.encode(train.query_texts, batch_size=batch_size,
                           normalize_embeddings=normalize, show_progress_bar=True)
  ref_d = reference.encode(docs, batch_size=batch_size, normalize_embeddings=normalize,
                           show_progress_bar=True)
  timings["reference_encode_s"] = time.perf_counter() - start

  depth = min(100, len(docs))
  ours_run = metrics.run_from_topk(train.query_ids, train.corpus_ids,
                                   *exact_search(ours_q, ours_d, depth))
  ref_run = metrics.run_from_topk(train.query_ids, train.corpus_ids,
                                  *exact_search(np.asarray(ref_q), np.asarray(ref_d), depth))
  scann_top = ScannIndex.build(ours_d).search(ours_q, 10)[1]
  exact_top = exact_search(ours_q, ours_d, 10)[1]

  ours_bm25 = BM25Index.build(docs, k1=0.9, b=0.4)
  bm25_run = metrics.run_from_topk(train.query_ids, train.corpus_ids,
                                   *ours_bm25.search(train.query_texts, depth))
  # bm25s exactly as its README shows, same parameters.
  stemmer = Stemmer.Stemmer("english")
  retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
  retriever.index(bm25s.tokenize(docs, stopwords="en", stemmer=stemmer, show_progress=False),
                  show_progress=False)
  direct_ids, direct_scores = retriever.retrieve(
      bm25s.tokenize(train.query_texts, stopwords="en", stemmer=stemmer, show_progress=False),
      k=depth, show_progress=False)
  direct_run = metrics.run_from_topk(train.query_ids, train.corpus_ids, direct_scores,
                                     direct_ids)

  results = {"timings": timings, "max_abs_diff_embeddings": float(np.abs(ours_d - ref_d).max())}
  for split, qids in (("train", set(train.query_ids)), ("dev", dev_ids)):
    rows = [i for i, q in enumerate(train.query_ids) if q in qids]
    qrels = {q: train.qrels[q] for q in train.query_ids if q in qids}
    pick = lambda run: {q: run[q] for q in qrels}  # pylint: disable=cell-var-from-loop
    ndcg = lambda run: metrics.evaluate(qrels, pick(run), ["ndcg@10"])["ndcg@10"]  # pylint: disable=cell-var-from-loop
    results[split] = {
        "queries": len(qrels),
        "ours_ndcg@10": ndcg(ours_run), "reference_ndcg@10": ndcg(ref_run),
        "bm25_ours_ndcg@10": ndcg(bm25_run), "bm25s_direct_ndcg@10": ndcg(direct_run),
        "scann_overlap@10": evaluation.topk_overlap(scann_top[rows], exact_top[rows]),
    }
    results[split]["dense_delta"] = results[split]["ours_ndcg@10"] - results[split]["reference_ndcg@10"]
    results[split]["bm25_delta"] = (results[split]["bm25_ours_ndcg@10"]
                                    - results[split]["bm25s_direct_ndcg@10"])
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  results = compare(FLAGS.data, FLAGS.model, FLAGS.max_length, FLAGS.batch_size, FLAGS.limit_docs)
  keys = [k for k in results["train"] if k != "queries"]
  print(f"\n{'measure':<24}{'train':>10}{'dev':>10}")
  print(f"{'queries':<24}{results['train']['queries']:>10}{results['dev']['queries']:>10}")
  for key in keys:
    print(f"{key:<24}{results['train'][key]:>10.4f}{results['dev'][key]:>10.4f}")
  print(f"max |ours - reference| over document embeddings: {results['max_abs_diff_embeddings']:.2e}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
