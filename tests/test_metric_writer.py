"""Tests for retrieval_jax.metric_writer: events read back by TensorBoard's reader, JSONL, bar.

The tests taking the `logdir` fixture run on a local directory and on gs:// (the emulator).
"""

from __future__ import annotations

import io
import json
import logging
import math

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.tensorflow_stub.io import gfile

from retrieval_jax import metric_writer
from retrieval_jax.metric_writer import MetricWriter, ProgressBar, read_scalars

# Every step's metrics, with a tag TensorBoardX's add_scalar would have renamed ("@").
_STEPS = {
    0: {"train/loss": 2.5, "train/lr": 1.2e-5},
    10: {"train/loss": 0.4312, "train/lr": 3e-5, "dev/ndcg@10": 0.61},
    25: {"train/loss": 0.125, "train/lr": 2.5e-5},
}


@pytest.fixture(params=["local", "gcs"])
def logdir(request, tmp_path) -> epath.Path:
  """A logdir that does not exist yet: under tmp_path, or in a new emulator bucket."""
  if request.param == "local":
    return epath.Path(tmp_path) / "tb"
  return epath.Path(request.getfixturevalue("gcs_bucket")) / "run" / "tb"


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
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def _event_files(logdir: epath.Path) -> list[str]:
  return sorted(p.name for p in logdir.glob("events.out.tfevents.*"))


def test_scalars_read_back_by_read_scalars(logdir):
  _write_steps(logdir)
  _assert_close(read_scalars(logdir), _expected())


def test_scalars_read_back_by_tensorboard_event_accumulator(tmp_path):
  _write_steps(tmp_path / "tb")
  acc = _accumulator(tmp_path / "tb")
  got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
  _assert_close(got, _expected())


def test_large_steps_and_negative_values(tmp_path):
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(3, {"train/loss": 0.25})
    writer.write_scalars(2**40, {"train/loss": -1.5})
  assert read_scalars(tmp_path) == {"train/loss": [(3, 0.25), (2**40, -1.5)]}


def test_jsonl_holds_the_same_scalars_in_float64(tmp_path):
  _write_steps(tmp_path / "tb")
  _assert_close(metric_writer._read_scalars_jsonl(tmp_path / "tb"), _expected(), rtol=0)


def test_read_scalars_missing_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    read_scalars(tmp_path / "nope")


def test_read_scalars_missing_gcs_dir(gcs_bucket):
  with pytest.raises(FileNotFoundError, match="nope"):
    read_scalars(f"{gcs_bucket}/nope")


def test_jsonl_lines_are_json_and_non_finite_values_round_trip(tmp_path):
  logdir = tmp_path / "tb"
  with MetricWriter(logdir, enabled=True) as writer:
    writer.write_scalars(1, {"a": 0.5, "b": float("nan")})
    writer.write_scalars(2, {"a": float("inf"), "b": -np.inf})
  lines = (logdir / metric_writer.JSONL_FILE).read_text().splitlines()
  records = [json.loads(line) for line in lines]  # strict JSON: no bare NaN / Infinity
  assert records == [{"step": 1, "a": 0.5, "b": "nan"}, {"step": 2, "a": "inf", "b": "-inf"}]

  for reader in (read_scalars, metric_writer._read_scalars_jsonl):
    got = reader(logdir)
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


def test_every_flush_keeps_the_earlier_records(logdir):
  # On gs:// TensorBoard's GFile would append each record after the first, which gcsfs turns
  # into an overwrite: only the last record would be left.
  writer = MetricWriter(logdir, enabled=True, flush_every_s=3600)
  for step in range(3):
    writer.write_scalars(step, {"a": float(step)})
    writer.flush()
    want = {"a": [(s, float(s)) for s in range(step + 1)]}
    assert read_scalars(logdir) == want
    assert metric_writer._read_scalars_jsonl(logdir) == want
  writer.close()
  assert read_scalars(logdir) == {"a": [(0, 0.0), (1, 1.0), (2, 2.0)]}


def test_resumed_run_appends_beside_the_first(logdir):
  # Two writers within one second: distinct event files, read in the order they were written.
  with MetricWriter(logdir, enabled=True) as first:
    first.write_scalars(1, {"a": 1.0})
    first.write_scalars(2, {"a": 2.0})
  with MetricWriter(logdir, enabled=True) as second:
    second.write_scalars(2, {"a": 20.0})
    second.write_scalars(3, {"a": 3.0})
  assert len(_event_files(logdir)) == 2
  want = {"a": [(1, 1.0), (2, 2.0), (2, 20.0), (3, 3.0)]}
  assert read_scalars(logdir) == want
  assert metric_writer._read_scalars_jsonl(logdir) == want


def test_event_file_names_sort_in_write_order_across_the_counters_digits(tmp_path):
  # EventFileWriter numbers its files with a process-wide counter that is not zero-padded:
  # bring it to ...9 on scratch directories, then open two writers on one logdir.
  def counter(logdir) -> int:
    (name,) = _event_files(epath.Path(logdir))
    return int(name.rsplit(".", 1)[1])

  scratch = 0
  while True:
    MetricWriter(tmp_path / f"scratch{scratch}", enabled=True).close()
    if set(str(counter(tmp_path / f"scratch{scratch}") + 1)) == {"9"}:
      break
    scratch += 1
  logdir = tmp_path / "tb"
  with MetricWriter(logdir, enabled=True) as first:
    first.write_scalars(1, {"a": 1.0})
  with MetricWriter(logdir, enabled=True) as second:
    second.write_scalars(1, {"a": 2.0})
  names = _event_files(epath.Path(logdir))
  assert [len(name.rsplit(".", 1)[1]) for name in names] in ([1, 2], [2, 3], [3, 4])
  assert read_scalars(logdir) == {"a": [(1, 1.0), (1, 2.0)]}


def test_seconds_to_wait():
  assert metric_writer._seconds_to_wait(None, 100.5) == 0
  assert metric_writer._seconds_to_wait(99.9, 100.5) == 0
  assert metric_writer._seconds_to_wait(100.2, 100.5) == pytest.approx(0.5)


def test_resumed_run_on_gcs_keeps_the_objects_of_the_first(gcs_server, gcs_bucket):
  logdir = f"{gcs_bucket}/run/tb"
  with MetricWriter(logdir, enabled=True) as first:
    first.write_hparams({"lr": 1e-5})
    first.write_scalars(1, {"a": 1.0})
  with MetricWriter(logdir, enabled=True) as second:
    second.write_scalars(2, {"a": 2.0})
  objects = sorted(gcs_server.list_objects(gcs_bucket[len("gs://"):]))
  events = [name for name in objects if name.startswith("run/tb/events.out.tfevents.")]
  assert len(events) == 2
  assert sorted(set(objects) - set(events)) == ["run/tb/hparams.json", "run/tb/metrics.jsonl"]
  text = (epath.Path(logdir) / metric_writer.JSONL_FILE).read_text()
  assert text == '{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n'
  assert read_scalars(logdir) == {"a": [(1, 1.0), (2, 2.0)]}


def test_gcs_writes_go_through_a_filesystem_without_append(tmp_path):
  MetricWriter(tmp_path, enabled=True).close()
  assert not hasattr(gfile.get_filesystem("gs://bucket/tb/events"), "append")
  assert isinstance(gfile.get_filesystem(str(tmp_path / "events")), gfile.LocalFileSystem)


def test_write_hparams(logdir):
  config = ml_collections.ConfigDict({
      "model": {"name": "bert|base", "dims": (768, 12)},
      "optim": {"lr": 1e-5, "warmup": float("inf")},
      "seed": 0,
      "dtype": jnp.bfloat16,
  })
  with MetricWriter(logdir, enabled=True) as writer:
    writer.write_hparams(config)
  want = {"model.dims": [768, 12], "model.name": "bert|base", "optim.lr": 1e-5,
          "optim.warmup": "inf", "seed": 0, "dtype": str(jnp.bfloat16)}
  assert json.loads((logdir / metric_writer.HPARAMS_FILE).read_text()) == want
  assert not list(logdir.glob("*.tmp"))

  acc = _accumulator(logdir)
  (event,) = acc.Tensors("config/text_summary")
  assert event.step == 0
  assert acc.SummaryMetadata("config/text_summary").plugin_data.plugin_name == "text"
  text = event.tensor_proto.string_val[0].decode()
  assert text.splitlines()[:2] == ["| key | value |", "|---|---|"]
  assert "| model.name | bert\\|base |" in text
  assert "| optim.lr | 1e-05 |" in text


def test_write_hparams_replaces_the_file_of_a_resumed_run(logdir):
  with MetricWriter(logdir, enabled=True) as writer:
    writer.write_hparams({"lr": 1e-5})
  with MetricWriter(logdir, enabled=True) as writer:
    writer.write_hparams({"lr": 2e-5})
  assert json.loads((logdir / metric_writer.HPARAMS_FILE).read_text()) == {"lr": 2e-5}


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
