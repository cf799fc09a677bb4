"""Ranking metrics through pytrec_eval, and TREC run files.

All metric maths is trec_eval's (through pytrec_eval); this module only names the measures,
completes and truncates runs, and averages per-query values. A run is `{query_id: {doc_id: score}}`
and qrels are `{query_id: {doc_id: relevance}}`, with string ids.

Metric names (k a positive integer):
  ndcg@k       trec_eval `ndcg_cut_k`
  recall@k     trec_eval `recall_k`
  precision@k  trec_eval `P_k`
  map          trec_eval `map`
  map@k        trec_eval `map_cut_k`
  success@k    trec_eval `success_k`: 1 when any relevant document is in the top k, else 0 (the
               "recall@k" of ReQA, where a question counts as answered by any gold sentence)
  mrr          trec_eval `recip_rank`
  mrr@k        trec_eval `recip_rank` of the run truncated to each query's k best documents.
               trec_eval has no cut-off for recip_rank, so this is how MRR@k is defined here (the
               MS MARCO definition): a first relevant document at rank k + 1 or later scores 0.

trec_eval ranks a query's documents by score, descending, and breaks ties by document id,
descending; the truncation for mrr@k and the rank column of `write_trec_run` follow the same order,
so that a rank in a run file is the rank trec_eval evaluates.
"""

import collections
import dataclasses
import os
import re
from typing import Mapping, Sequence

import numpy as np
import pytrec_eval
from etils import epath

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map")
SUPPORTED_METRICS = ("ndcg@k, recall@k, precision@k, success@k, map, map@k, mrr, mrr@k "
                     "(k a positive integer)")

# Our name -> trec_eval's measure family, for the names that take a cut-off.
_CUT_MEASURES = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut",
                 "success": "success"}
_METRIC_PATTERN = re.compile(r"^(ndcg|recall|precision|success|map|mrr)(?:@([1-9][0-9]*))?$")


@dataclasses.dataclass(frozen=True)
class _Measure:
  """How one metric name is computed by pytrec_eval."""
  name: str  # As the caller wrote it; the key of the result.
  trec_measure: str  # What pytrec_eval is asked for, e.g. 'ndcg_cut.10'.
  result_key: str  # Where pytrec_eval puts the value, e.g. 'ndcg_cut_10'.
  run_depth: int | None  # Evaluate the run truncated to this many documents per query (mrr@k).


def _parse_metric(name: str) -> _Measure:
  match = _METRIC_PATTERN.match(name.strip().lower())
  if match is None:
    raise ValueError(f"unknown metric {name!r}; supported: {SUPPORTED_METRICS}")
  family, cut = match.group(1), match.group(2)
  if family == "mrr":
    return _Measure(name, "recip_rank", "recip_rank", int(cut) if cut else None)
  if cut is None:
    if family != "map":
      raise ValueError(
          f"metric {name!r} needs a cut-off, e.g. {family}@10; supported: {SUPPORTED_METRICS}")
    return _Measure(name, "map", "map", None)
  trec_family = _CUT_MEASURES[family]
  return _Measure(name, f"{trec_family}.{cut}", f"{trec_family}_{cut}", None)


def evaluate_per_query(
    qrels: Qrels, run: Run, metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, dict[str, float]]:
  """Each metric for each query of the qrels.

  Args:
    qrels: relevance judgments; a query's documents with relevance >= 1 are relevant (nDCG uses the
      graded values as gains).
    run: retrieved documents and their scores; queries absent from the qrels are ignored.
    metrics: names as in the module docstring.

  Returns:
    `{query_id: {metric: value}}` for every query of the qrels that has at least one judgment (even
    if all its judgments are 0: it then scores 0). A query the run does not have, or has with no
    documents, gets 0 for every metric (pytrec_eval itself would silently leave it out).

  Raises:
    ValueError: for an unknown metric name.
  """
  measures = [_parse_metric(name) for name in metrics]
  # A query without a single judgment is not evaluated by trec_eval; it is not a query of the qrels.
  qrels = {str(qid): {str(doc): int(rel) for doc, rel in docs.items()}
           for qid, docs in qrels.items() if docs}
  # pytrec_eval drops queries that are missing from the run; an empty ranking makes it score them 0.
  run_by_id = {str(qid): docs for qid, docs in run.items()}
  run = {qid: {str(doc): float(score) for doc, score in run_by_id.get(qid, {}).items()}
         for qid in qrels}

  by_depth = collections.defaultdict(list)
  for measure in measures:
    by_depth[measure.run_depth].append(measure)
  per_query = {qid: {} for qid in qrels}
  for depth, group in by_depth.items():
    evaluated_run = run
    if depth is not None:
      evaluated_run = {qid: _top_documents(docs, depth) for qid, docs in run.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {measure.trec_measure for measure in group})
    results = evaluator.evaluate(evaluated_run)
    for qid in qrels:
      for measure in group:
        per_query[qid][measure.name] = float(results[qid][measure.result_key])
  return per_query


def evaluate(qrels: Qrels, run: Run, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
  """Each metric averaged over the queries of the qrels (see `evaluate_per_query`).

  Args:
    qrels: relevance judgments, `{query_id: {doc_id: relevance}}`.
    run: `{query_id: {doc_id: score}}`; a qrels query it lacks counts as 0.
    metrics: names as in the module docstring, e.g. ('ndcg@10', 'mrr@10', 'recall@100', 'map').

  Returns:
    `{metric: mean value}` with the metric names exactly as given.

  Raises:
    ValueError: for an unknown metric name, or qrels without a single judgment.
  """
  per_query = evaluate_per_query(qrels, run, metrics)
  if not per_query:
    raise ValueError("qrels has no judged queries: there is nothing to average over")
  return {name: float(np.mean([values[name] for values in per_query.values()])) for name in metrics}


def _ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
  """A query's (doc_id, score) pairs in trec_eval's order: score, then doc id, both descending."""
  return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def _top_documents(docs: Mapping[str, float], depth: int) -> dict[str, float]:
  return dict(_ranked(docs)[:depth])


def run_from_topk(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, indices: np.ndarray
) -> dict[str, dict[str, float]]:
  """A run from the output of a top-k search.

  Args:
    query_ids: the id of each row of scores / indices.
    doc_ids: the id of each corpus row that indices point into.
    scores: [num_queries, k] scores.
    indices: [num_queries, k] corpus rows; negative entries mean "no result" (e.g. a BM25 query that
      matches fewer than k documents) and are skipped.

  Returns:
    `{query_id: {doc_id: score}}`; every query is present, possibly with no documents. When several
    rows map to one document id (e.g. passages of one document), the document keeps its best score.
  """
  scores, indices = np.asarray(scores), np.asarray(indices)
  if scores.shape != indices.shape or scores.ndim != 2 or scores.shape[0] != len(query_ids):
    raise ValueError(f"expected scores and indices of shape [{len(query_ids)}, k], got "
                     f"{scores.shape} and {indices.shape}")
  run = {}
  for qid, row_scores, row_indices in zip(query_ids, scores.tolist(), indices.tolist()):
    docs = run.setdefault(str(qid), {})
    for score, index in zip(row_scores, row_indices):
      if index < 0:
        continue
      doc = str(doc_ids[index])
      if doc not in docs or score > docs[doc]:
        docs[doc] = float(score)
  return run


def write_trec_run(path: str | os.PathLike, run: Run, tag: str = "retrieval_jax") -> None:
  """Writes a run as `qid Q0 docid rank score tag` lines, ranks from 1.

  Queries come in the run's order; each query's documents by score, descending, ties by doc id,
  descending (trec_eval's order). Scores are written with `repr`, so `read_trec_run` gives back the
  exact floats.

  Args:
    path: the file to write.
    run: `{query_id: {doc_id: score}}`.
    tag: the run name in the last column.

  Raises:
    ValueError: if an id or the tag is empty or contains whitespace (the format is space-separated).
  """
  _check_token(tag, "tag")
  with epath.Path(path).open("w", encoding="utf-8") as f:
    for qid, docs in run.items():
      _check_token(str(qid), "query id")
      ranked = _ranked({str(doc): float(score) for doc, score in docs.items()})
      for rank, (doc, score) in enumerate(ranked, start=1):
        _check_token(doc, "doc id")
        f.write(f"{qid} Q0 {doc} {rank} {score!r} {tag}\n")


def read_trec_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
  """Reads a TREC run file (`qid Q0 docid rank score tag`) into `{query_id: {doc_id: score}}`.

  The rank column is ignored, as trec_eval ignores it: scores define the order.

  Raises:
    ValueError: on a line without six fields, a score that is not a number, or a (query, doc) pair
      listed twice.
  """
  run: dict[str, dict[str, float]] = {}
  with epath.Path(path).open("r", encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 6:
        raise ValueError(
            f"{path}:{line_number}: expected 'qid Q0 docid rank score tag', got {line!r}")
      qid, _, doc, _, score, _ = fields
      docs = run.setdefault(qid, {})
      if doc in docs:
        raise ValueError(f"{path}:{line_number}: document {doc!r} listed twice for query {qid!r}")
      try:
        docs[doc] = float(score)
      except ValueError:
        raise ValueError(f"{path}:{line_number}: score {score!r} is not a number") from None
  return run


def _check_token(value: str, what: str) -> None:
  if not value or any(character.isspace() for character in value):
    raise ValueError(
        f"{what} {value!r} is empty or contains whitespace; TREC files are space-separated")


@dataclasses.dataclass(frozen=True)
class PairedComparison:
  """Run B against run A on the same queries (B - A), from per-query values of one metric."""
  mean_a: float
  mean_b: float
  mean_diff: float
  ci_low: float      # 95% paired-bootstrap interval of the mean difference
  ci_high: float
  p_value: float     # two-sided paired randomisation (sign-flip) test
  wins: int          # queries where B > A
  losses: int        # queries where B < A
  num_queries: int


def paired_comparison(values_a: Mapping[str, float], values_b: Mapping[str, float], *,
                      num_samples: int = 10000, seed: int = 0) -> PairedComparison:
  """Is run B better than run A beyond per-query noise? (Smucker et al. 2007's tests.)

  Args:
    values_a: {query_id: value} of one metric for run A (`evaluate_per_query`).
    values_b: the same for run B; both must cover the same queries.
    num_samples: bootstrap resamples and random sign flips.
    seed: RNG seed (results are reproducible).

  Raises:
    ValueError: the runs cover different queries, or none.
  """
  if set(values_a) != set(values_b) or not values_a:
    raise ValueError(f"the runs must cover the same, non-empty set of queries "
                     f"({len(values_a)} vs {len(values_b)}, {len(set(values_a) ^ set(values_b))} "
                     "differ)")
  ids = sorted(values_a)
  a = np.asarray([values_a[q] for q in ids], np.float64)
  b = np.asarray([values_b[q] for q in ids], np.float64)
  diff = b - a
  rng = np.random.default_rng(seed)
  means = diff[rng.integers(0, len(diff), (num_samples, len(diff)))].mean(axis=1)
  flipped = (rng.choice((-1.0, 1.0), (num_samples, len(diff))) * diff).mean(axis=1)
  observed = abs(diff.mean())
  return PairedComparison(
      mean_a=float(a.mean()), mean_b=float(b.mean()), mean_diff=float(diff.mean()),
      ci_low=float(np.percentile(means, 2.5)), ci_high=float(np.percentile(means, 97.5)),
      # +1 on both sides: the observed assignment is one of the permutations (never p = 0).
      p_value=float((np.sum(np.abs(flipped) >= observed - 1e-12) + 1) / (num_samples + 1)),
      wins=int(np.sum(diff > 0)), losses=int(np.sum(diff < 0)), num_queries=len(diff))
