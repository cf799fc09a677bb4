"""Smoke tests of eval/bench_encode.py: `main` on 16 SciFact documents writes sane JSON."""

import json
import math
import pathlib
import sys

from absl import app
from absl import flags
from absl.testing import flagsaver
import jax
import numpy as np
import pytest

# `pytest` (unlike `python -m pytest`) does not put the repository root on sys.path, and `eval/`
# is not part of the installed package.
_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from eval import bench_encode  # pylint: disable=g-import-not-at-top,wrong-import-position

_KEYS = {"ours_docs_per_s", "reference_docs_per_s", "ratio", "max_abs_diff", "n_docs", "batch_size",
         "batch_rows", "max_length", "devices", "jax_version", "torch_version", "torch_threads",
         "mean_tokens_per_doc", "ours_padding_fraction", "reference_padding_fraction",
         "ours_warmup_s", "reference_warmup_s", "ours_seconds", "reference_seconds", "tokenize_s"}


def _run_main(argv):
  """Parses `argv` into the global absl flags and runs `main`, restoring the flags afterwards."""
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    bench_encode.main(argv[:1])


def test_main_on_16_docs_writes_sane_json(tmp_path, scifact_dir, minilm_dir, capsys):
  pytest.importorskip("torch")
  pytest.importorskip("sentence_transformers")
  out = tmp_path / "nested" / "bench.json"
  # 16 docs at 64 tokens (nearly all SciFact documents hit the cap): one compiled shape, seconds.
  _run_main(["bench_encode", "--limit=16", f"--out={out}", f"--data={scifact_dir}",
             f"--model={minilm_dir}", "--batch_size=8", "--max_length=64", "--repeats=2"])
  result = json.loads(out.read_text())

  assert _KEYS <= set(result)
  assert result["n_docs"] == 16 and result["max_length"] == 64 and result["batch_size"] == 8
  # Whatever devices JAX has (8 fake ones under this conftest): never forced by the benchmark.
  assert result["devices"] == len(jax.local_devices())
  assert result["batch_rows"] % result["devices"] == 0 and result["batch_rows"] >= 8
  for key in ("ours_docs_per_s", "reference_docs_per_s", "ratio"):
    assert math.isfinite(result[key]) and result[key] > 0, key
  assert result["ratio"] == pytest.approx(
      result["ours_docs_per_s"] / result["reference_docs_per_s"])
  assert result["ours_docs_per_s"] == pytest.approx(16 / np.median(result["ours_seconds"]))
  assert len(result["ours_seconds"]) == len(result["reference_seconds"]) == 2
  # Same weights, both float32, both L2-normalised: equal up to float rounding.
  assert 0 <= result["max_abs_diff"] < 1e-4
  assert result["min_cosine"] > 0.9999
  assert 0 < result["mean_tokens_per_doc"] <= 64
  assert 0 <= result["ours_padding_fraction"] < 1
  assert 0 <= result["reference_padding_fraction"] < 1
  assert result["torch_threads"] >= 1
  assert result["ours_warmup_s"] > 0 and result["tokenize_s"] >= 0
  printed = capsys.readouterr().out
  assert "sentence-transformers" in printed and "ratio ours/reference" in printed


def test_missing_data_is_a_usage_error(tmp_path):
  with pytest.raises(app.UsageError, match="--data"):
    bench_encode.load_documents(str(tmp_path / "no_such_dir"), 16)


def test_padding_helpers_count_padded_tokens():
  token_ids = [[1] * 10, [1] * 3, [1] * 7]  # Sorted: 10, 7 | 3 (+ one filler row).
  stats = bench_encode.padding_stats(token_ids, batch_size=2, max_length=16, pad_to_multiple_of=8)
  # Batch 1: width 16, 17 real of 32; batch 2: width 8, 3 real of 16 (filler row included).
  assert stats["ours_padding_fraction"] == pytest.approx(1 - 20 / 48)
  assert stats["ours_num_batches"] == 2 and stats["ours_batch_widths"] == [16, 8]
  texts = ["a" * 10, "a" * 3, "a" * 7]  # Character lengths sort the same way here.
  fraction = bench_encode.reference_padding_fraction(texts, np.array([10, 3, 7]), batch_size=2)
  assert fraction == pytest.approx(1 - 20 / 23)  # [10, 7] padded to 10, [3] to 3.
