"""eval/bench_colbert.py: its pure parts on a tiny ColBERT with PyLate absent or mocked, and
(slow) the real benchmark against PyLate's venv on 200 SciFact documents."""

import json
import math
import os
import pathlib
import subprocess
import sys

from absl import app
from absl import flags
import jax
import numpy as np
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from eval import bench_colbert
from retrieval_jax import encode_tokens
from retrieval_jax.data import colbert_format as cf
from retrieval_jax.index import maxsim
from retrieval_jax.models import colbert_files
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, init_params
from retrieval_jax.models.heads import TokenProjectionConfig
from tests import helpers
# pylint: enable=g-import-not-at-top,wrong-import-position

PYLATE_VENV = pathlib.Path("/work/venvs/pylate")
_TOP_KEYS = {"cpu", "environment", "threads", "devices", "load", "busy_processes_start",
             "versions", "settings", "model", "data", "warmup", "rounds", "summary", "exact",
             "elapsed_s"}
_ROUND_KEYS = {"system", "round", "load", "encode_corpus_s", "index_build_s", "index_bytes",
               "index_disk_bytes", "encode_queries_s", "search_s", "queries_per_s",
               "queries_per_s_with_encode", "ndcg@10", "recall@100", "exact_top10_overlap"}


@pytest.fixture(scope="module")
def tiny_colbert(tmp_path_factory, minilm_dir):
  """A random 2-layer, 32-wide BERT with a 16-d token head, as a stanford ColBERT directory
  (queries of 16 tokens, documents of at most 32: one compiled shape each)."""
  vocab = json.loads((minilm_dir / "tokenizer.json").read_text())["model"]["vocab"]
  config = EncoderConfig(vocab_size=len(vocab), hidden_size=32, num_layers=2, num_heads=4,
                         intermediate_size=64, max_position_embeddings=128)
  model = TextEncoder(config, token_projection=TokenProjectionConfig(dim=16))
  params = jax.tree_util.tree_map(
      np.asarray, helpers.params_unboxed(init_params(model, jax.random.PRNGKey(0))))
  out = tmp_path_factory.mktemp("tiny") / "colbert"
  colbert_files.save(out, config, params, tokenizer_dir=minilm_dir,
                     settings=colbert_files.ColbertSettings(dim=16, query_length=16,
                                                            doc_max_length=32))
  return out


def _main(argv):
  """`main` with a private FlagValues (other eval CLIs define --out on the global ones)."""
  flag_values = flags.FlagValues()
  bench_colbert.define_flags(flag_values)
  flag_values(argv)
  bench_colbert.main(argv[:1], flag_values)


def test_ours_only_on_synthetic_data_writes_the_schema(tiny_colbert, tmp_path, capsys):
  out = tmp_path / "nested" / "bench.json"
  # k' above every token: each round re-ranks every document, so the rounds agree even though
  # two ScaNN builds of the same vectors need not.
  _main(["bench_colbert", f"--model={tiny_colbert}", "--data=synthetic", "--skip_pylate",
         "--rounds=2", "--token_depth=4096", "--k=10", f"--out={out}"])
  result = json.loads(out.read_text())

  assert _TOP_KEYS <= set(result)
  assert result["cpu"] and result["threads"] >= 1 and len(result["load"]["start"]) == 3
  assert result["versions"]["ours"]["jax"] == jax.__version__
  assert result["versions"]["pylate"] is None and "parity" not in result
  assert result["model"]["kind"] == "directory"
  assert result["data"]["n_docs"] == 96 and result["data"]["n_queries"] > 0
  rounds = result["rounds"]
  assert [(r["system"], r["round"]) for r in rounds] == [("ours", 0), ("ours", 1)]
  for entry in rounds:
    assert _ROUND_KEYS <= set(entry)
    assert entry["search_s"] == pytest.approx(entry["token_search_s"] + entry["rerank_s"])
    assert entry["index_bytes"] == entry["index_memory"]["total_bytes"] > 0
    assert entry["index_disk_bytes"] > 0 and 0.0 <= entry["ndcg@10"] <= 1.0
    assert entry["compiles"] == 0  # every shape was compiled in the warm-up
  # Same weights and texts: the rounds agree on quality.
  assert rounds[0]["ndcg@10"] == rounds[1]["ndcg@10"]
  ours = result["summary"]["ours"]
  assert ours["search_s"]["n"] == 2
  assert ours["search_s"]["min"] <= ours["search_s"]["median"] <= ours["search_s"]["max"]
  assert result["exact"]["exact_top10_overlap"] == 1.0
  assert rounds[0]["exact_top10_overlap"] == 1.0  # every document re-ranked: exact
  printed = capsys.readouterr().out
  assert "ours (JAX+ScaNN)" in printed and "where the time goes" in printed
  assert "exact MaxSim" in printed and "nDCG@10" in printed


def test_timed_halves_are_maxsim_index_search(tiny_colbert, tmp_path, monkeypatch):
  # The same index is searched both ways: two ScaNN builds of one store need not agree
  # (WORKSPACE, "ScaNN builds are not reproducible").
  built = []
  build = maxsim.MaxSimIndex.build
  monkeypatch.setattr(maxsim.MaxSimIndex, "build",
                      lambda *a, **kw: built.append(build(*a, **kw)) or built[-1])
  encoder = encode_tokens.load_token_encoder(tiny_colbert)
  corpus = bench_colbert.load_corpus("synthetic", "dev", 0)
  entry, rows, queries, store = bench_colbert.bench_ours(
      encoder, corpus, k=10, token_depth=20, batch_size=32, reorder_k=0, work_dir=tmp_path)
  (index,) = built
  assert index.num_tokens == store.num_tokens
  _, expected = index.search(queries, 10, 20)
  np.testing.assert_array_equal(rows, expected)
  assert entry["num_tokens"] == store.num_tokens and not (tmp_path / "ours_index").exists()


def test_a_training_workdir_is_exported_for_pylate(tiny_colbert, tmp_path, monkeypatch):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from retrieval_jax import recipes, run_config  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import base  # pylint: disable=g-import-not-at-top

  encoder = encode_tokens.load_token_encoder(tiny_colbert)
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text("{}")
  config = ml_collections.ConfigDict({"recipe": "colbert", "model": {
      "token_dim": 16, "colbert": {"query_marker": "[unused0]", "doc_marker": "[unused1]",
                                   "query_length": 16, "doc_max_length": 32,
                                   "attend_to_mask_tokens": False, "mask_punctuation": True}}})
  monkeypatch.setattr(run_config, "load_config", lambda w: config)
  monkeypatch.setattr(recipes, "eval_models",
                      lambda c, w: (base.EvalModels(extra={"colbert": encoder}), 7))
  model = bench_colbert.prepare_model(str(workdir), tmp_path, 0)
  assert model.encoder is encoder and model.info["step"] == 7
  _, params, settings, _ = colbert_files.load(model.colbert_dir)
  assert settings == colbert_files.ColbertSettings(dim=16, query_length=16, doc_max_length=32)
  np.testing.assert_array_equal(params["token_head"]["linear"]["kernel"],
                                encoder.params["token_head"]["linear"]["kernel"])
  assert (model.colbert_dir / "tokenizer.json").exists()
  monkeypatch.setattr(recipes, "eval_models", lambda c, w: (base.EvalModels(), 7))
  with pytest.raises(app.UsageError, match="--model=.*no colbert"):
    bench_colbert.prepare_model(str(workdir), tmp_path / "again", 0)


def test_maxsim_matrix_and_pylate_zero_padding():
  queries = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # one query, two positions
  short = np.array([[-1.0, 0.0]])                 # best similarities -1 and 0
  long = np.array([[-1.0, 0.0], [0.6, 0.8]])       # best 0.6 and 0.8
  np.testing.assert_allclose(bench_colbert.maxsim_matrix(queries, [short, long]), [[-1.0, 1.4]])
  # Zero-padded to 2 tokens (PyLate's rerank): the short document's -1 becomes 0.
  np.testing.assert_allclose(bench_colbert.maxsim_matrix(queries, [short, long], zero_pad_to=2),
                             [[0.0, 1.4]])


def _fake_worker(encoder):
  """A stand-in for `run_worker` that answers as PyLate would, from our own encoder."""
  fmt = encoder.format

  def run_worker(python, model_dir, inputs, work_dir, name, extra_args, timeout,
                 input_name=None):
    del python, model_dir, work_dir, name, timeout, input_name
    queries, docs = inputs["queries"], inputs["documents"]
    ours = bench_colbert.our_parity_side(encoder, queries, docs, 32)
    timings = {"versions": {"pylate": "mock"}, "model_load_s": 0.1, "warmup_s": 0.0,
               "encode_documents_s": 1.0, "encode_queries_s": 0.5, "torch_threads": 2,
               "n_document_vectors": sum(len(d) for d in ours["doc_vectors"])}
    config = {"query_prefix_id": fmt.query_marker_id, "document_prefix_id": fmt.doc_marker_id,
              "query_length": fmt.query_length, "document_length": fmt.doc_max_length,
              "attend_to_expansion_tokens": fmt.attend_to_mask_tokens,
              "do_query_expansion": True, "dim": encoder.dim,
              "skiplist_ids": sorted(fmt.skiplist_ids), "skiplist_words": ["."]}
    out = {"config": config, "timings": timings}
    if "--mode=embed" in extra_args:
      d_ids = cf.tokenize_documents(encoder.tokenizer, fmt, docs)
      keep = [cf.document_keep(fmt, np.asarray([s]), np.ones((1, len(s))))[0].astype(bool)
              for s in d_ids]
      longest = max(len(d) for d in ours["doc_vectors"])
      out.update(
          query_input_ids=ours["query_ids"].reshape(-1),
          query_attention_mask=ours["query_attention"].reshape(-1),
          query_input_lengths=np.full(len(queries), fmt.query_length),
          query_vectors=ours["query_vectors"].reshape(-1, encoder.dim),
          query_lengths=np.full(len(queries), fmt.query_length),
          document_input_ids=np.concatenate(d_ids), document_keep=np.concatenate(keep),
          document_input_lengths=np.array([len(s) for s in d_ids]),
          document_vectors=np.concatenate(ours["doc_vectors"]),
          document_lengths=np.array([len(d) for d in ours["doc_vectors"]]),
          colbert_scores=bench_colbert.maxsim_matrix(ours["query_vectors"], ours["doc_vectors"],
                                                     zero_pad_to=longest).astype(np.float32),
          colbert_scores_padded_length=np.array(longest))
      return out, 1.0
    index = next(a.split("=")[1] for a in extra_args if a.startswith("--index="))
    k = int(next(a.split("=")[1] for a in extra_args if a.startswith("--k=")))
    scores = bench_colbert.maxsim_matrix(ours["query_vectors"], ours["doc_vectors"])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ids = np.asarray(inputs["document_ids"])[order]
    timings.update(index_build_s=2.0, search_s=0.25, index_bytes=1234,
                   index_file_bytes={"index": 1234}, index_params={"index": index},
                   search_parts={} if index == "plaid" else {
                       "token_search_s": 0.1, "fetch_embeddings_s": 0.05, "rerank_s": 0.1})
    out.update(retrieved_ids=ids.astype(str),
               retrieved_scores=np.take_along_axis(scores, order, 1).astype(np.float32))
    return out, 3.0

  return run_worker


def test_mocked_pylate_end_to_end(tiny_colbert, tmp_path, monkeypatch, capsys):
  encoder = encode_tokens.load_token_encoder(tiny_colbert)
  monkeypatch.setattr(bench_colbert, "run_worker", _fake_worker(encoder))
  monkeypatch.setattr(bench_colbert, "ensure_pylate", lambda venv, install: {
      "venv": venv, "python": "python", "created": False, "install_s": 0.0,
      "note": bench_colbert.VENV_NOTE})
  result = bench_colbert.run(out_dir=tmp_path, model=str(tiny_colbert), data="synthetic",
                             rounds=1, token_depth=20, k=10, parity_queries=8, parity_docs=8)

  parity = result["parity"]
  assert parity["within_tolerance"] and all(
      v for k, v in parity["settings_match"].items())
  assert parity["queries_compared"] == 8 and parity["documents_compared"] == 8
  assert parity["query_vectors_max_abs_diff"] == 0.0 == parity["maxsim_max_abs_diff"]
  assert parity["pylate_colbert_scores_vs_zero_padded_max_abs_diff"] < 1e-5
  assert parity["maxsim_float16_store_max_abs_diff"] < 1e-2
  assert result["versions"]["pylate"] == {"pylate": "mock"}
  systems = [r["system"] for r in result["rounds"]]
  assert systems == ["ours", "pylate_plaid", "pylate_voyager"]
  plaid = result["rounds"][1]
  # The mock retrieves by exact MaxSim: its run equals exact search's.
  assert plaid["exact_top10_overlap"] == 1.0
  assert plaid["ndcg@10"] == pytest.approx(result["exact"]["ndcg@10"], abs=1e-6)
  assert plaid["queries_per_s"] == pytest.approx(result["data"]["n_queries"] / 0.25)
  assert plaid["queries_per_s_with_encode"] == pytest.approx(result["data"]["n_queries"] / 0.75)
  table = bench_colbert.format_table(result)
  assert "PyLate PLAID" in table and "PyLate Voyager" in table
  assert "HNSW token search 0.10" in table and "within 1e-04" in table
  assert bench_colbert.VENV_NOTE in table
  capsys.readouterr()


def test_compare_parity_names_mismatched_tokens(tiny_colbert):
  encoder = encode_tokens.load_token_encoder(tiny_colbert)
  corpus = bench_colbert.load_corpus("synthetic", "dev", 0)
  queries, docs = bench_colbert.parity_texts(corpus, 4, 5)
  theirs, _ = _fake_worker(encoder)("python", "dir", {"queries": queries, "documents": docs},
                                    None, "parity", ["--mode=embed"], 1)
  ours = bench_colbert.our_parity_side(encoder, queries, docs, 32)
  ids = theirs["document_input_ids"].copy()
  ids[theirs["document_input_lengths"][0] + 2] += 1  # a token of document 1
  noisy = theirs["query_vectors"].copy()
  noisy[3] += 1e-3
  result = bench_colbert.compare_parity(ours, dict(theirs, document_input_ids=ids,
                                                   query_vectors=noisy))
  assert result["document_ids_mismatched"] == [1] and result["documents_compared"] == 4
  assert result["query_vectors_max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
  assert not result["within_tolerance"]


def test_parity_texts_take_the_judged_documents_first():
  corpus = bench_colbert.load_corpus("synthetic", "dev", 0)
  queries, docs = bench_colbert.parity_texts(corpus, 3, 6)
  assert queries == corpus.query_texts[:3] and len(docs) == 6
  judged = {d for q in corpus.query_ids[:3] for d in corpus.qrels[q]}
  row_of = {d: r for r, d in enumerate(corpus.doc_ids)}
  assert {corpus.doc_texts[row_of[d]] for d in judged} <= set(docs)
  limited = bench_colbert.load_corpus("synthetic", "dev", 20)
  assert len(limited.doc_ids) == 20
  assert {d for q in limited.query_ids for d in limited.qrels[q]} <= set(limited.doc_ids)


def test_pylate_venv_is_created_or_refused(tmp_path):
  venv = tmp_path / "venv"
  with pytest.raises(app.UsageError, match="--venv"):
    bench_colbert.ensure_pylate(str(venv), install=False)
  ran = []

  def runner(command, **unused_kwargs):
    ran.append(command)
    return subprocess.CompletedProcess(command, 0)

  # The fake install installs nothing, so PyLate still does not import: refused, by flag.
  with pytest.raises(app.UsageError, match="--venv=.*still does not import"):
    bench_colbert.ensure_pylate(str(venv), install=True, runner=runner)
  assert ran == bench_colbert.install_commands(venv)
  assert ran[0][1:] == ["-m", "venv", str(venv)]
  assert ran[-1][-2:] == ["pylate", "voyager==2.1.0"]


def test_bad_arguments_are_usage_errors(tmp_path):
  for kwargs, flag in (({"rounds": 0}, "--rounds"), ({"k": 0}, "--k"),
                       ({"limit_docs": -1}, "--limit_docs"),
                       ({"pylate_indexes": ["faiss"]}, "--pylate_indexes")):
    with pytest.raises(app.UsageError, match=flag):
      bench_colbert.run(out_dir=tmp_path, **kwargs)
  with pytest.raises(app.UsageError, match="--model"):
    bench_colbert.prepare_model(str(tmp_path / "missing"), tmp_path, 0)
  (tmp_path / "plain").mkdir()
  with pytest.raises(app.UsageError, match="--model"):
    bench_colbert.prepare_model(str(tmp_path / "plain"), tmp_path, 0)
  with pytest.raises(app.UsageError, match="--data"):
    bench_colbert.load_corpus(str(tmp_path / "no_such_data"), "dev", 0)


@pytest.mark.slow  # MiniLM + PyLate (parity, PLAID, Voyager) on 200 SciFact documents: minutes
def test_real_benchmark_against_pylate(tmp_path, scifact_dir, minilm_dir):
  if not (PYLATE_VENV / "bin" / "python").exists():
    pytest.skip(f"no PyLate venv at {PYLATE_VENV} (the script would create it: ~5 GB)")
  out = tmp_path / "bench.json"
  env = {**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags(), "JAX_PLATFORMS": "cpu",
         "RETRIEVAL_JAX_DATA": str(scifact_dir.parent)}
  subprocess.run([sys.executable, "eval/bench_colbert.py", "--limit_docs=200", "--rounds=1",
                  f"--venv={PYLATE_VENV}", "--noinstall_pylate", f"--out={out}"], cwd=_REPO,
                 env=env, check=True, timeout=3600, capture_output=True, text=True)
  result = json.loads(out.read_text())
  parity = result["parity"]
  assert parity["within_tolerance"], parity
  assert parity["queries_compared"] == 64 and parity["documents_compared"] == 64
  assert parity["query_vectors_max_abs_diff"] <= 1e-4
  assert parity["document_vectors_max_abs_diff"] <= 1e-4
  assert parity["maxsim_max_abs_diff"] <= 1e-4
  assert result["versions"]["pylate"]["pylate"] and result["data"]["n_docs"] == 200
  assert set(result["summary"]) == {"ours", "pylate_plaid", "pylate_voyager", "exact"}
  for entry in result["rounds"]:
    assert 0.0 < entry["ndcg@10"] <= 1.0 and entry["index_bytes"] > 0
    assert math.isfinite(entry["search_s"]) and entry["search_s"] > 0
  # Voyager's candidates are re-ranked by exact MaxSim, as ours are.
  voyager = next(r for r in result["rounds"] if r["system"] == "pylate_voyager")
  assert voyager["exact_top10_overlap"] >= 0.9
