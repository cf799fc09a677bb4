"""Smoke test of eval/bench_train.py: `main` on a tiny random BERT and synthetic data."""

import json
import math
import pathlib
import sys

from absl import app
from absl import flags
import jax
import numpy as np
import pytest

# `pytest` (unlike `python -m pytest`) does not put the repository root on sys.path, and `eval/`
# is not part of the installed package.
_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from eval import bench_train  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

_KEYS = {"ours_examples_per_s", "reference_examples_per_s", "ratio", "ratio_paired_median",
         "ratio_per_round", "ours_seconds", "reference_seconds", "ours_prepare_seconds",
         "reference_tokenize_seconds", "loss_ours_no_dropout", "loss_reference_no_dropout",
         "loss_ours_first_step", "loss_reference_first_step", "batch_size", "query_max_length",
         "passage_max_length", "steps", "rounds", "devices", "torch_threads", "torch_version",
         "jax_version", "sentence_transformers_version", "ours_compiles_timed", "data"}


def _run_main(argv):
  """Parses `argv` into a private FlagValues (the script's flags clash with bench_encode's on the
  global ones) and runs `main` with it."""
  flag_values = flags.FlagValues()
  bench_train.define_flags(flag_values)
  flag_values(argv)
  bench_train.main(argv[:1], flag_values)


@pytest.mark.slow  # trains with both frameworks end to end: over a minute on 2 cores
def test_main_on_tiny_bert_writes_sane_json(tmp_path, minilm_dir, capsys):
  pytest.importorskip("torch")
  pytest.importorskip("sentence_transformers")
  model_dir, _, _ = helpers.write_tiny_bert(tmp_path / "tiny", minilm_dir)
  out = tmp_path / "nested" / "bench.json"
  # Batch 8: one row on each of conftest's 8 fake devices; synthetic documents fit 32 tokens.
  _run_main(["bench_train", f"--out={out}", f"--model={model_dir}", "--data=synthetic",
             "--batch_size=8", "--query_max_length=16", "--passage_max_length=32", "--steps=1",
             "--rounds=1", "--warmup_steps=1"])
  result = json.loads(out.read_text())

  assert _KEYS <= set(result)
  assert result["data"] == "synthetic" and result["batch_size"] == 8 and result["steps"] == 1
  assert result["devices"] == len(jax.local_devices())  # Never forced by the benchmark.
  for key in ("ours_examples_per_s", "reference_examples_per_s", "ratio"):
    assert math.isfinite(result[key]) and result[key] > 0, key
  assert result["ratio"] == pytest.approx(
      result["ours_examples_per_s"] / result["reference_examples_per_s"])
  assert result["ours_examples_per_s"] == pytest.approx(8 / np.median(result["ours_seconds"]))
  assert len(result["ours_seconds"]) == len(result["reference_seconds"]) == 1
  # Same weights, texts and objective with dropout off: the same loss up to float rounding.
  assert result["loss_ours_no_dropout"] == pytest.approx(result["loss_reference_no_dropout"],
                                                         abs=1e-4)
  assert result["loss_ours_no_dropout"] > 0
  for key in ("loss_ours_first_step", "loss_reference_first_step"):
    assert math.isfinite(result[key]) and result[key] > 0, key
  # Every timed shape was compiled in the warm-up.
  assert result["ours_compiles_timed"] == 0
  assert result["ours_batch_shapes"] == [[16, 32]]
  printed = capsys.readouterr().out
  assert "sentence-transformers" in printed and "ratio ours/reference" in printed


def test_bad_arguments_are_usage_errors(tmp_path):
  with pytest.raises(app.UsageError, match="--data"):
    bench_train.load_split(str(tmp_path / "no_such_dir"))
  with pytest.raises(app.UsageError, match="--batch_size"):
    bench_train.run(batch_size=0)
