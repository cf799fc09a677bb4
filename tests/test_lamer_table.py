"""`eval/lamer_table.py` on made-up runs (the real ones come from `eval/lamer_table.sh`)."""

import json
import types

from eval import lamer_table
from retrieval_jax import metrics

QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}


def _write(runs, name, run, where="eval/dev", answers=None, bm25=None):
  out = runs / name / where
  out.mkdir(parents=True)
  metrics.write_trec_run(out / "run.trec", run)
  if bm25 is not None:
    metrics.write_trec_run(out / "bm25_run.trec", bm25)
  if answers is not None:
    (out / "generations.jsonl").write_text("".join(
        json.dumps({"query_id": q, "answers": a}) + "\n" for q, a in answers.items()))
  (out / "eval_info.json").write_text(json.dumps({"timings": {"generate_s": 120.0}}))
  (runs / f"{name}.done").touch()


def test_rows_against_bm25_and_greedy_answers_compared(tmp_path, monkeypatch):
  monkeypatch.setattr(lamer_table.splits, "load_split", lambda *a, **k: types.SimpleNamespace(
      qrels=QRELS, query_ids=list(QRELS)))
  bm25 = {"q1": {"d1": 2.0, "d9": 1.0}, "q2": {"d9": 2.0, "d2": 1.0}, "q3": {"d9": 1.0}}
  perfect = {q: {d: 1.0} for q, docs in QRELS.items() for d in docs}
  _write(tmp_path, "lamer_jax_greedy", perfect, answers={"q1": ["a"], "q2": ["b"], "q3": ["c"]},
         bm25=bm25)
  _write(tmp_path, "lamer_llamacpp_f32_greedy", perfect,
         answers={"q1": ["a"], "q2": ["b"], "q3": ["x"]}, bm25=bm25)
  _write(tmp_path, "minilm", bm25, where=".")
  (tmp_path / "hyde_jax").mkdir()  # started, not finished
  result = lamer_table.collect(tmp_path)
  rows = {r["run"]: r for r in result["rows"]}
  assert rows["bm25"]["metrics"]["ndcg@10"] < 1.0
  assert rows["lamer_jax_greedy"]["metrics"]["ndcg@10"] == 1.0
  assert rows["lamer_jax_greedy"]["vs_bm25"]["diff"] > 0
  assert rows["minilm"]["vs_bm25"]["diff"] == 0.0
  assert rows["lamer_jax"]["metrics"] is None
  (pair,) = result["greedy_pairs"]
  assert pair["identical_answers"] == 2 and pair["queries"] == 3 and pair["diff"] == 0.0
  assert result["in_progress"] == ["hyde_jax"]
  table = lamer_table.markdown(result)
  assert "| BM25 (k1 0.9, b 0.4) |" in table and "2/3 identical answers" in table
  assert "2 min" in table and "not finished: hyde_jax" in table
