"""Tests for retrieval_jax.metric_writer: events read back by TensorBoard's reader, JSONL, bar."""

from __future__ import annotations

import io
import json
import logging
import math
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from retrieval_jax import metric_writer
from retrieval_jax.metric_writer import MetricWriter, ProgressBar, read_scalars

# Every step's metrics, with a tag TensorBoardX's add_scalar would have renamed ("@").
_STEPS = {
    0: {"train/loss": 2.5, "train/lr": 1.2e-5},
    10: {"train/loss": 0.4312, "train/lr": 3e-5, "dev/ndcg@10": 0.61},
    25: {"train/loss": 0.125, "train/lr": 2.5e-5},
}


def _expected() -> dict[str, list[tuple[int, float]]]:
  out: dict[str, list[tuple[int, float]]] = {}
  for step, scalars in _STEPS.items():
    for key, value in scalars.items():
      out.setdefault(key, []).append((step, value))
  return out


def _assert_close(got: dict, want: dict, rtol: float = 1e-6) -> None:
  """Same tags, steps and values; events hold float32, so to float32 precision."""
  assert sorted(got) == sorted(want)
  for tag, points in want.items():
    assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
    np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in points], rtol=rtol,
                               err_msg=tag)


def _write_steps(logdir, **kwargs) -> None:
  with MetricWriter(logdir, enabled=True, **kwargs) as writer:
    for step, scalars in _STEPS.items():
      writer.write_scalars(step, scalars)


def _accumulator(logdir):
  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  acc = event_accumulator.EventAccumulator(str(logdir),
                                           size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return acc


def test_scalars_read_back_by_read_scalars(tmp_path):
  _write_steps(tmp_path / "tb")
  _assert_close(read_scalars(tmp_path / "tb"), _expected())


def test_scalars_read_back_by_tensorboard_event_accumulator(tmp_path):
  _write_steps(tmp_path / "tb")
  acc = _accumulator(tmp_path / "tb")
  got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
  _assert_close(got, _expected())


def test_read_scalars_falls_back_to_jsonl_without_tensorboard(tmp_path, monkeypatch):
  _write_steps(tmp_path / "tb")
  monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
  got = read_scalars(tmp_path / "tb")
  # The JSONL keeps float64: exact.
  _assert_close(got, _expected(), rtol=0)


def test_read_scalars_missing_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    read_scalars(tmp_path / "nope")


def test_jsonl_lines_are_json_and_non_finite_values_round_trip(tmp_path, monkeypatch):
  logdir = tmp_path / "tb"
  with MetricWriter(logdir, enabled=True) as writer:
    writer.write_scalars(1, {"a": 0.5, "b": float("nan")})
    writer.write_scalars(2, {"a": float("inf"), "b": -np.inf})
  lines = (logdir / metric_writer.JSONL_FILE).read_text().splitlines()
  records = [json.loads(line) for line in lines]  # strict JSON: no bare NaN / Infinity
  assert records == [{"step": 1, "a": 0.5, "b": "nan"}, {"step": 2, "a": "inf", "b": "-inf"}]

  for reader in ("tensorboard", "jsonl"):
    if reader == "jsonl":
      monkeypatch.setitem(sys.modules, "tensorboard", None)
    got = read_scalars(logdir)
    assert got["a"] == [(1, 0.5), (2, math.inf)], reader
    assert got["b"][0][0] == 1 and math.isnan(got["b"][0][1]), reader
    assert got["b"][1] == (2, -math.inf), reader


def test_jsonl_reader_skips_a_cut_last_line(tmp_path):
  _write_steps(tmp_path)
  with open(tmp_path / metric_writer.JSONL_FILE, "a") as f:
    f.write('{"step": 30, "train/lo')  # a run killed mid-write
  _assert_close(metric_writer._read_scalars_jsonl(tmp_path), _expected(), rtol=0)


def test_numpy_and_jax_scalars_accepted(tmp_path):
  logdir = tmp_path / "tb"
  with MetricWriter(logdir, enabled=True) as writer:
    writer.write_scalars(np.int64(3), {
        "np0d": np.array(1.5, np.float32), "npscalar": np.float64(2.5), "jax": jnp.float32(3.5),
        "jax_bf16": jnp.asarray(4.5, jnp.bfloat16), "int": 7, "bool": True,
    })
    writer.write_scalars(jnp.int32(4), {"jax": jnp.mean(jnp.arange(4.0))})
  got = read_scalars(logdir)
  assert got == {"np0d": [(3, 1.5)], "npscalar": [(3, 2.5)], "jax": [(3, 3.5), (4, 1.5)],
                 "jax_bf16": [(3, 4.5)], "int": [(3, 7.0)], "bool": [(3, 1.0)]}


@pytest.mark.parametrize("value", [
    np.zeros(2), jnp.ones((1,)), [1.0], "0.5", np.array(1 + 2j), None,
], ids=["np_vector", "jax_shape_1", "list", "str", "complex", "none"])
def test_non_scalar_raises_naming_the_key_and_writes_nothing(tmp_path, value):
  logdir = tmp_path / "tb"
  with MetricWriter(logdir, enabled=True) as writer:
    with pytest.raises(ValueError, match="dev/bad_metric"):
      writer.write_scalars(5, {"train/loss": 1.0, "dev/bad_metric": value})
  assert (logdir / metric_writer.JSONL_FILE).read_text() == ""
  assert read_scalars(logdir) == {}


def test_reserved_and_non_integer_step(tmp_path):
  with MetricWriter(tmp_path, enabled=True) as writer:
    with pytest.raises(ValueError, match="step"):
      writer.write_scalars(1, {"step": 1.0})
    with pytest.raises(TypeError):
      writer.write_scalars(1.5, {"a": 1.0})


def test_log_line(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(120, {"train/loss": 0.43121, "train/lr": 1.2e-5, "x": float("nan")})
  assert "step 120: train/loss=0.4312 train/lr=1.2e-05 x=nan" in caplog.messages


def test_disabled_writes_no_files(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  logdir = tmp_path / "tb"
  with MetricWriter(logdir, enabled=False) as writer:
    writer.write_scalars(1, {"a": jnp.float32(1.0)})
    writer.write_hparams({"lr": 1e-5})
    writer.flush()
    with pytest.raises(ValueError, match="vec"):  # still validated, as on process 0
      writer.write_scalars(1, {"vec": np.zeros(3)})
  assert not logdir.exists()
  assert not caplog.messages


def test_only_process_zero_writes_by_default(tmp_path, monkeypatch):
  assert MetricWriter(tmp_path / "p0").enabled  # this test process is process 0
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  writer = MetricWriter(tmp_path / "p1")
  writer.write_scalars(1, {"a": 1.0})
  writer.close()
  assert not writer.enabled and not (tmp_path / "p1").exists()
  assert not ProgressBar(10).enabled


def test_close_is_idempotent_and_writes_after_close_fail(tmp_path):
  writer = MetricWriter(tmp_path, enabled=True)
  writer.write_scalars(1, {"a": 1.0})
  writer.close()
  writer.close()
  writer.flush()  # a no-op once closed
  with pytest.raises(RuntimeError, match="closed"):
    writer.write_scalars(2, {"a": 2.0})
  with MetricWriter(tmp_path / "cm", enabled=True) as cm:
    cm.write_scalars(1, {"a": 1.0})
  cm.close()
  assert read_scalars(tmp_path / "cm") == {"a": [(1, 1.0)]}


def test_flush_makes_writes_readable_before_close(tmp_path):
  writer = MetricWriter(tmp_path, enabled=True, flush_every_s=3600)
  for step in range(200):
    writer.write_scalars(step, {"a": float(step)})
  writer.flush()
  assert len(read_scalars(tmp_path)["a"]) == 200
  assert len((tmp_path / metric_writer.JSONL_FILE).read_text().splitlines()) == 200
  writer.close()


def test_resumed_run_appends_beside_the_first(tmp_path):
  # Two writers within one second: distinct event files, read in the order they were written.
  with MetricWriter(tmp_path, enabled=True) as first:
    first.write_scalars(1, {"a": 1.0})
    first.write_scalars(2, {"a": 2.0})
  with MetricWriter(tmp_path, enabled=True) as second:
    second.write_scalars(2, {"a": 20.0})
    second.write_scalars(3, {"a": 3.0})
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
  want = {"a": [(1, 1.0), (2, 2.0), (2, 20.0), (3, 3.0)]}
  assert read_scalars(tmp_path) == want
  assert metric_writer._read_scalars_jsonl(tmp_path) == want


def test_write_hparams(tmp_path):
  config = ml_collections.ConfigDict({
      "model": {"name": "bert|base", "dims": (768, 12)},
      "optim": {"lr": 1e-5, "warmup": float("inf")},
      "seed": 0,
      "dtype": jnp.bfloat16,
  })
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_hparams(config)
  want = {"model.dims": [768, 12], "model.name": "bert|base", "optim.lr": 1e-5,
          "optim.warmup": "inf", "seed": 0, "dtype": str(jnp.bfloat16)}
  assert json.loads((tmp_path / metric_writer.HPARAMS_FILE).read_text()) == want
  assert not list(tmp_path.glob("*.tmp"))

  acc = _accumulator(tmp_path)
  (event,) = acc.Tensors("config/text_summary")
  text = event.tensor_proto.string_val[0].decode()
  assert text.splitlines()[:2] == ["| key | value |", "|---|---|"]
  assert "| model.name | bert\\|base |" in text
  assert "| optim.lr | 1e-05 |" in text


def test_progress_bar_disabled_does_nothing():
  out = io.StringIO()
  with ProgressBar(10, enabled=False, file=out) as bar:
    bar.update(5, {"loss": 1.0})
    assert bar.n is None
  bar.close()
  assert out.getvalue() == ""


def test_progress_bar_reaches_total_with_postfix():
  out = io.StringIO()
  bar = ProgressBar(10, initial_step=2, enabled=True, desc="train", file=out)
  bar.update(3)
  bar.update(7, {"loss": 0.123456, "lr": jnp.float32(1.2e-5)})  # jumps several steps
  assert bar.n == 7
  bar.update(10)
  assert bar.n == 10
  bar.close()
  bar.close()
  text = out.getvalue()
  assert "train" in text and "10/10" in text
  assert "loss=0.1235, lr=1.2e-05" in text
