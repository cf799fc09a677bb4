"""Telling greedy near-ties from real disagreements (eval/greedy_divergence.py), no model."""

import json

from absl import app
import numpy as np
import pytest

from eval import greedy_divergence as gd


def test_first_difference():
  assert gd.first_difference([1, 2, 3], [1, 2, 3]) is None
  assert gd.first_difference([1, 2, 3], [1, 5, 3]) == 1
  assert gd.first_difference([1, 2], [1, 2, 3]) == 2


def _fake_model(logits_for):
  tokenize = lambda text: [int(t) for t in text.split()]
  render = lambda prompt: [100]
  return render, tokenize, lambda tokens: np.asarray(logits_for(tokens), np.float64)


def test_divergence_reports_our_gap_between_the_two_chosen_tokens():
  # After the prompt and "1 2", our logits favour 3 over 4 by 0.001: a near-tie.
  logits = lambda tokens: [0, 0, 0, 5.001, 5.0] if tokens == [100, 1, 2] else [0] * 5
  record = gd.divergence(*_fake_model(logits), "p", "1 2 3", "1 2 4 4")
  assert record["token"] == 2 and not record["ended"]
  assert record["gap"] == pytest.approx(0.001) and record["a_is_our_argmax"]
  assert gd.divergence(*_fake_model(logits), "p", "1 2 3", "1 2 3") is None
  ended = gd.divergence(*_fake_model(logits), "p", "1 2", "1 2 4")
  assert ended["ended"] and ended["gap"] is None and ended["token"] == 2


def test_summarize_counts_near_ties():
  records = [None, None, {"token": 4, "gap": 1e-4, "ended": False},
             {"token": 10, "gap": 0.5, "ended": False}, {"token": 7, "gap": None, "ended": True}]
  summary = gd.summarize(records, tie=1e-2)
  assert summary["queries"] == 5 and summary["identical"] == 2 and summary["parted"] == 3
  assert summary["near_ties"] == 1 and summary["parted_where_one_ended"] == 1
  assert summary["gap_max"] == 0.5 and summary["first_token_median"] == 7


def test_load_generations_names_the_bad_line(tmp_path):
  path = tmp_path / "run" / "eval" / "dev"
  path.mkdir(parents=True)
  rows = [{"query_id": 1, "prompt": [{"role": "user", "content": "q"}], "answers": ["a"]}]
  (path / "generations.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
  with pytest.raises(app.UsageError, match=r"generations.jsonl:2: not a generations row"):
    gd.load_generations(tmp_path / "run")
  with pytest.raises(app.UsageError, match="not found"):
    gd.load_generations(tmp_path / "missing")
