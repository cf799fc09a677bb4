"""eval/sts.py end to end: a tiny model on a small STS-B directory, errors, a training workdir,
and (slow) MiniLM on the real dev split against sentence-transformers."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers
from tests.conftest import shared_data_dir
from tests.test_stsb_data import TINY_LINES, write_split
from tests.test_sts_evaluator import st_evaluator_class

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS = {"spearman", "pearson", "model", "pooling", "split", "pairs", "data", "max_length"}


def _run(*args, timeout=300):
  # One CPU device; the repository importable whatever is installed.
  environ = {**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags(), "JAX_PLATFORMS": "cpu",
             "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
  return subprocess.run([sys.executable, "eval/sts.py", "--progress=false", *args], cwd=REPO,
                        capture_output=True, text=True, env=environ, timeout=timeout,
                        check=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("stsb")
  write_split(root, "dev", TINY_LINES + [
      "main-forum\tdeft-forum\t2014\t0002\t1.0\tThe cat sat on the mat.\tA dog barked."])
  return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_dir):
  model_dir, _, _ = helpers.write_tiny_bert(tmp_path_factory.mktemp("bert"), minilm_dir)
  return model_dir


def test_a_model_directory_writes_metrics(data_dir, tiny_model, tmp_path):
  result = _run(f"--model={tiny_model}", "--pooling=cls", f"--data={data_dir}", "--split=dev",
                "--max_length=32", f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert set(metrics) == KEYS
  assert (metrics["model"], metrics["pooling"], metrics["split"], metrics["pairs"]) == (
      str(tiny_model), "cls", "dev", 5)
  assert metrics["data"] == str(data_dir / "sts-dev.csv") and metrics["max_length"] == 32
  assert -100 <= metrics["spearman"] <= 100 and -100 <= metrics["pearson"] <= 100
  assert "STS-B dev" in result.stdout and "5 pairs" in result.stdout
  assert len((tmp_path / "scores.tsv").read_text().splitlines()) == 6


@pytest.mark.parametrize("args,message", [
    (["--data={missing}"], "error: STS-B data '{missing}' is not a directory"),
    (["--data={data}", "--split=validation"],
     "error: --split='validation' is not one of train, dev, test"),
    (["--data={data}", "--split=test"],
     "error: {data}/sts-test.csv does not exist: no 'test' split in {data} (splits there: dev)"),
    (["--data={data}", "--model=bm25"], "error: --model=bm25 has no sentence vectors"),
    (["--data={data}", "--step=3"], "error: --step needs a training workdir"),
    (["--data={data}", "--model={missing}"], "error: model directory {missing} does not exist"),
])
def test_bad_input_is_one_error_line(data_dir, tmp_path, args, message):
  names = {"missing": tmp_path / "missing", "data": data_dir}
  result = _run(*(arg.format(**names) for arg in args))
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith(message.format(**names)), result.stderr[-2000:]
  assert "Traceback" not in result.stderr


@pytest.mark.slow  # a training run of its own (tests/test_eval_reqa_cli.py trains the same)
def test_a_training_workdir_keeps_its_pooling(data_dir, tmp_path):
  workdir = tmp_path / "dpr"
  trained = helpers.run_python(["main.py", "--config=configs/dpr.py:smoke",
                                f"--workdir={workdir}", "--config.train.progress=false"],
                               check=False)
  assert trained.returncode == 0, trained.stderr[-3000:]
  result = _run(f"--model={workdir}", f"--data={data_dir}", "--max_length=32")
  assert result.returncode == 0, result.stderr[-3000:]
  (step_dir,) = (workdir / "eval").glob("step_*")
  metrics = json.loads((step_dir / "sts" / "metrics.json").read_text())
  assert metrics["step"] == int(step_dir.name.split("_")[1]) and metrics["pairs"] == 5
  other = "cls" if metrics["pooling"] != "cls" else "mean"
  result = _run(f"--model={workdir}", f"--data={data_dir}", f"--pooling={other}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: --pooling={other} differs from the pooling {workdir} was trained with "
      f"({metrics['pooling']})"), result.stderr[-2000:]


def sentence_transformers_dev(minilm_dir: pathlib.Path, pairs, pooling: str) -> dict:
  """sentence-transformers' own numbers: the packaged all-MiniLM-L6-v2, its Pooling replaced by
  CLS for `cls`, max_seq_length 128, its `EmbeddingSimilarityEvaluator` (cosine)."""
  import sentence_transformers  # pylint: disable=g-import-not-at-top
  from sentence_transformers import models  # pylint: disable=g-import-not-at-top

  model = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu")
  model.max_seq_length = 128
  if pooling == "cls":
    dimension = model[1].get_sentence_embedding_dimension()
    modules = [model[0], models.Pooling(dimension, pooling_mode="cls")]
    model = sentence_transformers.SentenceTransformer(modules=modules, device="cpu")
  evaluator = st_evaluator_class()(pairs.sentence1, pairs.sentence2, pairs.scores.tolist(),
                                   batch_size=64, write_csv=False)
  values = evaluator(model)
  return {"spearman": 100 * values["spearman_cosine"],
          "pearson": 100 * values["pearson_cosine"]}


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_minilm_on_the_real_dev_split_equals_sentence_transformers(pooling, minilm_dir,
                                                                     tmp_path):
  pytest.importorskip("sentence_transformers")
  root = shared_data_dir()
  if root is None or not (root / "stsb" / "sts-dev.csv").exists():
    pytest.skip("STS-B not found: set $RETRIEVAL_JAX_DATA or place ../shared/data/stsb")
  from retrieval_jax.data import stsb  # pylint: disable=g-import-not-at-top

  result = _run("--model=minilm", f"--pooling={pooling}", f"--data={root / 'stsb'}",
                "--split=dev", f"--out={tmp_path}", timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  ours = json.loads((tmp_path / "metrics.json").read_text())
  assert (ours["pairs"], ours["pooling"], ours["max_length"]) == (1500, pooling, 128)
  reference = sentence_transformers_dev(minilm_dir, stsb.load_pairs(root / "stsb", "dev"),
                                        pooling)
  print(f"[measured] STS-B dev, MiniLM {pooling}: ours {ours['spearman']:.4f} / "
        f"{ours['pearson']:.4f}, sentence-transformers {reference['spearman']:.4f} / "
        f"{reference['pearson']:.4f} (Spearman / Pearson x 100)")
  assert ours["spearman"] == pytest.approx(reference["spearman"], abs=0.05)
  assert ours["pearson"] == pytest.approx(reference["pearson"], abs=0.05)
  assert np.isfinite(ours["spearman"])
