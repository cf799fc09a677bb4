"""run_config: config.json round trip, and which changes a resumed run refuses."""

import json

import ml_collections
import pytest

from retrieval_jax import run_config


def _config(**train):
  return ml_collections.ConfigDict({
      "seed": 0, "note": "", "optim": {"lr": 1e-5, "warmup_steps": 100},
      "mesh": {"data": -1, "model": 2}, "data": {"name": "scifact", "lengths": (32, 128)},
      "train": {"batch_size": 8, "log_every_steps": 50, "stop_at_step": None, **train},
      "evals": {"dev": {"index": "exact"}}, "variant": None})


def test_config_round_trip(tmp_path):
  path = run_config.save_config(tmp_path, _config())
  assert path.endswith("config.json")
  loaded = run_config.load_config(tmp_path)
  assert loaded.optim.lr == 1e-5 and loaded.mesh.model == 2 and loaded.variant is None
  assert list(loaded.data.lengths) == [32, 128]  # JSON turns tuples into lists
  assert not list(tmp_path.glob("*.tmp"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    run_config.load_config(tmp_path / "missing")


def test_changed_keys_ignores_safe_fields_and_json_round_trips():
  saved = run_config.as_json(_config())
  same = _config(log_every_steps=1, stop_at_step=4)
  same.note, same.mesh.model, same.evals.dev.index = "resumed", 1, "scann"
  assert run_config.changed_keys(saved, same) == []
  assert run_config.changed_keys(saved, _config()) == []  # tuples and lists agree
  changed = _config(batch_size=16)
  changed.optim.lr = 2e-5
  with changed.unlocked():
    changed.optim.b3 = 0.5      # added
    del changed.optim["warmup_steps"]  # removed
  assert run_config.changed_keys(saved, changed) == [
      "optim.b3", "optim.lr", "optim.warmup_steps", "train.batch_size"]


def test_check_resume_refuses_with_the_keys_or_keeps_the_old_file(tmp_path):
  run_config.save_config(tmp_path, _config())
  assert run_config.check_resume(tmp_path, _config(log_every_steps=5), 40) == []
  changed = _config(batch_size=16)
  with pytest.raises(run_config.ConfigChangedError) as error:
    run_config.check_resume(tmp_path, changed, 40)
  message = str(error.value)
  assert "train.batch_size: 8 -> 16" in message and "step 40" in message
  assert "\n" not in message and "--allow_config_change" in message
  assert run_config.check_resume(tmp_path, changed, 40, allow_changes=True) == [
      "train.batch_size"]
  kept = json.loads((tmp_path / "config.step_40.json").read_text())
  assert kept["train"]["batch_size"] == 8


def test_check_resume_without_a_saved_config_accepts(tmp_path):
  assert run_config.check_resume(tmp_path, _config(), 3) == []


def test_input_errors_become_one_kind_and_keep_their_cause():
  with pytest.raises(run_config.InputError, match="loss.queue_size") as error:
    with run_config.input_errors():
      raise ValueError("loss.queue_size=20 must be a multiple of train.batch_size=8")
  assert isinstance(error.value, ValueError) and isinstance(error.value.__cause__, ValueError)
  with pytest.raises(run_config.InputError, match="no such file"):
    with run_config.input_errors():
      raise FileNotFoundError("no such file")
  with pytest.raises(KeyError):  # anything else is a bug: left as it is
    with run_config.input_errors():
      raise KeyError("bug")
  assert issubclass(run_config.ConfigChangedError, run_config.InputError)
