"""Slow end-to-end checks on real SciFact: the issue's acceptance numbers (`pytest -m slow`)."""

import pytest

pytestmark = pytest.mark.slow


def test_scifact_parity_with_references(scifact_dir):
  """Ours vs sentence-transformers (dense) and vs bm25s (BM25), and ScaNN's top-10 overlap."""
  from eval import parity_scifact  # pylint: disable=g-import-not-at-top

  results = parity_scifact.compare(str(scifact_dir), "minilm", max_length=256, batch_size=64)
  for split in ("train", "dev"):
    row = results[split]
    assert abs(row["dense_delta"]) <= 0.002, row
    assert abs(row["bm25_delta"]) <= 0.005, row
    assert row["scann_overlap@10"] >= 0.95, row
  assert results["dev"]["queries"] > 100
