"""End-to-end: eval/retrieval.py and main.py on a tiny BEIR set with a tiny random BERT."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import helpers

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_dir):
  root = tmp_path_factory.mktemp("tiny")
  data = helpers.write_tiny_beir(root / "beir")
  model, _, _ = helpers.write_tiny_bert(root / "model", minilm_dir)
  return data, model, root


def _run(args, cwd=REPO, **env):
  environ = {**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags(),
             "RETRIEVAL_JAX_TFDS_DIR": env.pop("tfds")}
  result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=environ, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.parametrize("index", ["exact", "scann", "bm25"])
def test_eval_retrieval_script_writes_metrics_and_run(tiny, index, tmp_path):
  data, model, root = tiny
  out = tmp_path / "out"
  _run(["eval/retrieval.py", f"--model={model}", f"--data={data}", "--split=test",
        f"--index={index}", "--max_length=32", "--depth=5", f"--out={out}", "--progress=false",
        "--save_embeddings"], tfds=str(root / "tfds"))
  metrics = json.loads((out / "metrics.json").read_text())
  assert set(metrics) >= {"ndcg@10", "mrr@10", "recall@10", "recall@100", "map"}
  assert all(0.0 <= v <= 1.0 for v in metrics.values())
  lines = (out / "run.trec").read_text().splitlines()
  assert {line.split()[0] for line in lines} == set(helpers.TINY_QUERIES)
  assert all(len(line.split()) == 6 for line in lines)
  assert (out / "corpus_embeddings.npy").exists() == (index != "bm25")
  if index == "bm25":
    # Lexical overlap makes every tiny query find its document first.
    assert metrics["mrr@10"] == pytest.approx(1.0)


def test_eval_retrieval_module_form_and_bad_model(tiny, tmp_path):
  data, _, root = tiny
  environ = {**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags(),
             "RETRIEVAL_JAX_TFDS_DIR": str(root / "tfds")}
  result = subprocess.run(
      [sys.executable, "-m", "eval.retrieval", f"--model={tmp_path / 'missing'}",
       f"--data={data}", "--split=test", "--progress=false"],
      cwd=REPO, capture_output=True, text=True, env=environ, timeout=300, check=False)
  assert result.returncode != 0
  assert "does not exist" in result.stderr


@pytest.mark.parametrize("mode", [[], ["--mode=eval"]])
def test_main_zeroshot_evaluates_through_the_registry(tiny, tmp_path, mode):
  """An evaluation-only recipe: the default mode and --mode=eval both run config.evals."""
  data, model, root = tiny
  result = _run(["main.py", "--config=configs/zeroshot.py:smoke", f"--workdir={tmp_path}",
                 *mode, f"--config.model.name={model}", f"--config.data.name={data}",
                 "--config.evals.dev.data.split=test"], tfds=str(root / "tfds"))
  assert "dev/ndcg@10" in result.stdout
  metrics = json.loads((tmp_path / "eval" / "dev" / "metrics.json").read_text())
  assert set(metrics) == {"ndcg@10", "recall@10"}
  assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == str(model)


def test_main_refuses_to_train_an_evaluation_only_recipe(tmp_path):
  environ = {**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags()}
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/zeroshot.py", f"--workdir={tmp_path}",
       "--mode=train"], cwd=REPO, capture_output=True, text=True, env=environ, timeout=120,
      check=False)
  assert result.returncode != 0
  assert "has no training steps" in result.stderr
  assert "Traceback" not in result.stderr


def test_main_names_a_missing_evaluation_data_set_in_one_line(tmp_path):
  """Evaluators read their data when they first run: still the user's input, not a bug."""
  environ = {**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags()}
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/zeroshot.py:smoke", f"--workdir={tmp_path}",
       f"--config.data.name={tmp_path / 'nowhere'}"],
      cwd=REPO, capture_output=True, text=True, env=environ, timeout=120, check=False)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: evals.dev.data.name='{tmp_path / 'nowhere'}', split 'dev': data set")


def test_main_rejects_unknown_config_key(tmp_path):
  environ = {**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags()}
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/zeroshot.py", f"--workdir={tmp_path}",
       "--mode=eval", "--config.evals.dev.no_such_key=1"],
      cwd=REPO, capture_output=True, text=True, env=environ, timeout=120, check=False)
  assert result.returncode != 0
  assert "no_such_key" in result.stderr


def test_compare_runs_script(tiny, tmp_path):
  """Two evaluation directories and a workdir-shaped one: the table has a row each."""
  data, _, root = tiny
  from retrieval_jax import metrics  # pylint: disable=g-import-not-at-top

  good = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d2": 2.0}, "q3": {"d4": 1.0},
          "q4": {"d6": 1.0}}
  bad = {"q1": {"d2": 2.0, "d1": 1.0}, "q2": {"d3": 2.0}, "q3": {"d1": 1.0},
         "q4": {"d5": 1.0}}
  (tmp_path / "good").mkdir()
  metrics.write_trec_run(tmp_path / "good" / "run.trec", good)
  (tmp_path / "bad" / "eval" / "step_7" / "dev").mkdir(parents=True)
  metrics.write_trec_run(tmp_path / "bad" / "eval" / "step_7" / "dev" / "run.trec", bad)
  (tmp_path / "zeroshot" / "eval" / "dev").mkdir(parents=True)  # an evaluation-only workdir
  metrics.write_trec_run(tmp_path / "zeroshot" / "eval" / "dev" / "run.trec", bad)
  result = _run(["eval/compare_runs.py", f"--data={data}", "--split=test",
                 f"--runs={tmp_path / 'good'},{tmp_path / 'bad'},{tmp_path / 'zeroshot'}",
                 "--metric=mrr@10", "--samples=200"], tfds=str(root / "tfds"))
  lines = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))]
  assert len(lines) == 3
  assert "1.0000" in lines[0]            # every query's relevant document ranked first
  assert "-0.8750" in lines[1]           # the other run: q1 at rank 2 (0.5), the rest 0
  assert "-0.8750" in lines[2]
  missing = subprocess.run(
      [sys.executable, "eval/compare_runs.py", f"--runs={tmp_path / 'good'},{tmp_path / 'no'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
      env={**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags()})
  assert missing.returncode != 0 and "Traceback" not in missing.stderr
  assert f"{tmp_path / 'no'}: no run.trec" in missing.stderr
