"""ColBERT end to end on `configs/colbert.py:smoke` (tiny random encoder, synthetic data).

Covers: the configs; ColBERT-format batches (markers, [MASK] padding, keep masks); the
scores of the pairwise loss equal the in-batch scores' own-group columns; in-batch MaxSim
on a (4, 2) mesh equals one device; a smoke run's final evaluation, its export (a ColBERT
directory) and `eval/retrieval.py` on the workdir and on the export (end to end and
re-ranking); the re-ranking evaluator reusing the corpus the end-to-end one encoded; a
2-process evaluation equal to one; invalid keys rejected before compiling.
"""

import json
import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from retrieval_jax import encode_tokens, losses, sharding, train
from retrieval_jax.models import colbert_files
from retrieval_jax.recipes import colbert, dual_encoder

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import colbert as colbert_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import multiprocess  # pylint: disable=wrong-import-position
from tests.helpers import (  # pylint: disable=wrong-import-position
    assert_rejected_before_compiling, assert_shapes_follow_the_global_batch, run_python,
    with_overrides)


def _smoke(**overrides):
  return with_overrides(colbert_config.get_config("smoke"), overrides)


def test_configs_follow_the_paper():
  assert "Khattab" in colbert_config.__doc__
  paper = colbert_config.get_config()
  assert paper.model.name == "bert-base-uncased" and paper.model.token_dim == 128
  colbert_format = paper.model.colbert
  assert (colbert_format.query_length, colbert_format.doc_max_length) == (32, 180)
  assert (colbert_format.query_marker, colbert_format.doc_marker) == ("[unused0]", "[unused1]")
  assert not colbert_format.attend_to_mask_tokens and colbert_format.mask_punctuation
  assert (paper.train.batch_size, paper.train.num_steps, paper.optim.lr) == (32, 200_000, 3e-6)
  assert paper.optim.decay == "constant" and paper.optim.warmup_steps == 0
  assert paper.loss.type == "pairwise" and paper.negatives.num == 1
  assert paper.train.query_max_length == 32 and paper.train.passage_max_length == 180
  # The batcher's lengths follow the format when it is overridden.
  paper.model.colbert.doc_max_length = 220
  assert paper.train.passage_max_length == 220
  cpu = colbert_config.get_config("cpu")
  assert cpu.model.name == "minilm" and set(cpu.evals) == {"dev", "dev_rerank"}
  assert cpu.evals.dev_rerank.index == "bm25_maxsim" and cpu.loss.type == "in_batch"
  with pytest.raises(ValueError, match="unknown variant"):
    colbert_config.get_config("tpu")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("colbert_smoke")
  return workdir, train.run(_smoke(), workdir, "train_and_eval")


def test_batches_are_in_the_colbert_format(tmp_path):
  config = _smoke()
  recipe = colbert.build(config, tmp_path, sharding.mesh_from_config(config))
  batch = recipe.batcher.batch(0)
  fmt = recipe.batcher.format
  assert batch["query_input_ids"].shape == (8, 16)
  assert (batch["query_input_ids"][:, 1] == fmt.query_marker_id).all()
  assert (batch["passage_input_ids"][:, :, 1] == fmt.doc_marker_id).all()
  padded = batch["query_attention_mask"] == 0
  assert padded.any() and (batch["query_input_ids"][padded] == fmt.mask_id).all()
  assert batch["query_keep_mask"].all()
  keep, attention = batch["passage_keep_mask"], batch["passage_attention_mask"]
  assert (keep <= attention).all()
  assert recipe.eval_roles == ("colbert",)
  assert_shapes_follow_the_global_batch(recipe.batcher)


def test_own_group_scores_equal_in_batch_scores(tmp_path):
  config = _smoke()
  recipe = colbert.build(config, tmp_path, sharding.mesh_from_config(config))
  batch = {k: v for k, v in recipe.batcher.batch(0).items() if k not in recipe.batcher.host_keys}
  dual, spec = dual_encoder.DualEncoder(dual_encoder.model_spec(config.model).module, True), None
  del spec
  params = jax.tree_util.tree_map(np.asarray, recipe.init_state()["params"])["shared"]
  full = np.asarray(colbert.batch_scores(dual.model, params, batch, None, False))
  own = np.asarray(colbert.batch_scores(dual.model, params, batch, None, True))
  group = batch["passage_input_ids"].shape[1]
  np.testing.assert_allclose(own, np.asarray(losses.own_group_scores(full, group)), atol=1e-5)
  # On a (4, 2) mesh (batch over `data`) the in-batch scores are those of one device.
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  rows = NamedSharding(mesh, P("data"))
  sharded = jax.jit(lambda p, b: colbert.batch_scores(dual.model, p, b, None, False),
                    in_shardings=(NamedSharding(mesh, P()), rows))(params, batch)
  np.testing.assert_allclose(np.asarray(sharded), full, atol=1e-5)


def test_smoke_run_evaluates_and_exports_a_colbert_directory(smoke_run):
  workdir, summary = smoke_run
  metrics = summary["eval"]
  assert 0.0 < metrics["dev/ndcg@10"] <= 1.0
  assert metrics["dev/index_num_docs"] == 96 and metrics["dev/index_bytes_per_token"] > 32
  export = workdir / "export" / "colbert"
  assert colbert_files.is_colbert_dir(export)
  loaded = encode_tokens.load_token_encoder(export)
  config = _smoke()
  models, step = colbert.restore_eval_models(config, workdir)
  assert step == 6
  restored = models.get("colbert")
  assert loaded.format == restored.format
  texts = ["a query", "another, longer query with words"]
  np.testing.assert_allclose(encode_tokens.encode_queries(loaded, texts, progress=False),
                             encode_tokens.encode_queries(restored, texts, progress=False),
                             atol=1e-6)


def test_eval_cli_on_the_workdir_and_on_the_export(smoke_run, tmp_path):
  workdir, summary = smoke_run
  common = ["--data=synthetic", "--split=dev", "--metrics=ndcg@10,recall@10", "--depth=10",
            "--batch_size=16", "--noprogress"]
  out = tmp_path / "e2e"
  result = run_python(["eval/retrieval.py", f"--model={workdir}", "--index=maxsim",
                       "--token_depth=20", "--scann_num_leaves=8", "--scann_leaves_to_search=8",
                       "--scann_reorder_k=4096", f"--out={out}", *common])
  assert "step 6" in result.stdout
  e2e = json.loads((out / "metrics.json").read_text())
  assert e2e["ndcg@10"] == pytest.approx(summary["eval"]["dev/ndcg@10"], abs=1e-6)
  out = tmp_path / "rerank"
  run_python(["eval/retrieval.py", f"--model={workdir / 'export' / 'colbert'}",
              "--index=bm25_maxsim", "--rerank_depth=50", f"--out={out}", *common])
  rerank = json.loads((out / "metrics.json").read_text())
  assert 0.0 < rerank["ndcg@10"] <= 1.0 and rerank["reranked_documents"] > 10
  info = json.loads((out / "eval_info.json").read_text())
  assert info["settings"]["index"] == "bm25_maxsim"
  # Bad input is one line and status 1 (here: a directory that is no ColBERT model).
  bad = run_python(["eval/retrieval.py", f"--model={out}", "--index=maxsim", *common],
                   check=False)
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error:")


@pytest.mark.parametrize("overrides, key", [
    ({"loss.type": "listwise"}, "loss.type"),
    ({"model.token_dim": None}, "model.token_dim"),
    ({"model.shared_towers": False}, "model.shared_towers"),
    ({"negatives.num": 0}, "negatives.num"),
    ({"loss.grad_cache": True}, "loss.grad_cache"),
    ({"model.colbert.query_marker": "[NOPE]"}, "model.colbert.query_marker"),
    ({"data.max_passages": 2}, "data.max_passages"),
])
def test_invalid_config_fails_before_compiling(tmp_path, monkeypatch, overrides, key):
  assert_rejected_before_compiling(_smoke(**overrides), tmp_path, key, monkeypatch)


def test_two_processes_evaluate_like_one(smoke_run, tmp_path):
  """`main.py --mode=eval` on 2 processes x 4 devices: each encodes and indexes half of the
  corpus, `dev_rerank` re-ranks from the shares `dev` encoded; the metrics are the run's."""
  workdir, summary = smoke_run
  evaluation = tmp_path / "workdir"
  shutil.copytree(workdir, evaluation)
  shutil.rmtree(evaluation / "eval")
  multiprocess.run(multiprocess.main_py("--config=configs/colbert.py:smoke",
                                        f"--workdir={evaluation}", "--mode=eval"), 2, 4,
                   tmp_path / "logs", timeout=120).check()
  for name in ("dev", "dev_rerank"):
    again = json.loads((evaluation / "eval" / "step_6" / name / "metrics.json").read_text())
    own = {k: v for k, v in summary["eval"].items() if k.startswith(f"{name}/")}
    for key in ("ndcg@10", "recall@10"):
      assert again[key] == pytest.approx(own[f"{name}/{key}"], abs=1e-6), (name, key)
  assert again["reranked_documents"] == summary["eval"]["dev_rerank/reranked_documents"]


def _rankings(run_file: pathlib.Path) -> dict[str, list[str]]:
  ranked: dict[str, list[str]] = {}
  for line in run_file.read_text().splitlines():
    query, _, doc, *_ = line.split()
    ranked.setdefault(query, []).append(doc)
  return ranked


def test_mode_eval_runs_the_config_evaluators(smoke_run, tmp_path):
  from retrieval_jax import recipes  # pylint: disable=g-import-not-at-top
  workdir, summary = smoke_run
  config = _smoke()
  result = recipes.evaluate(config, workdir, out_root=tmp_path / "both")
  assert result["step"] == 6
  assert result["metrics"]["dev/ndcg@10"] == pytest.approx(summary["eval"]["dev/ndcg@10"],
                                                           abs=1e-6)
  assert (tmp_path / "both" / "dev" / "run.trec").exists()
  # The re-ranking evaluator reuses the corpus `dev` encoded in the same round, and ranks
  # as it does alone (encoding only its candidates).
  info = json.loads((tmp_path / "both" / "dev_rerank" / "eval_info.json").read_text())
  assert info["timings"]["encode_corpus_s"] == 0.0
  del config.evals["dev"]
  alone = recipes.evaluate(config, workdir, out_root=tmp_path / "alone")
  assert alone["metrics"]["dev_rerank/ndcg@10"] == pytest.approx(
      result["metrics"]["dev_rerank/ndcg@10"], abs=1e-6)
  assert alone["metrics"]["dev_rerank/reranked_documents"] == result["metrics"][
      "dev_rerank/reranked_documents"]
  assert _rankings(tmp_path / "alone" / "dev_rerank" / "run.trec") == _rankings(
      tmp_path / "both" / "dev_rerank" / "run.trec")
