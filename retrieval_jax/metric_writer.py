"""The training loop's logging: scalars to TensorBoard, a JSONL file and the log; a progress bar.

Only process 0 writes (the default); the others validate their inputs and do nothing else, so
a multi-host run has one event file per writer and one `metrics.jsonl`. A logdir (a local
path or `gs://bucket/...`: every path is an `etils.epath.Path`) looks like:

  logdir/events.out.tfevents.<time>.<host>.<pid>.<n>   # TensorBoard events
  logdir/metrics.jsonl                                 # {"step": 120, "train/loss": 0.43, ...}
  logdir/hparams.json                                  # the flattened config

Typical use:

  with MetricWriter(workdir / "tensorboard") as writer:
    writer.write_hparams(config)
    bar = ProgressBar(config.num_steps, initial_step=start_step)
    for step in ...:
      writer.write_scalars(step, {"train/loss": loss, "train/lr": lr})
      bar.update(step, {"loss": loss})
    bar.close()

Events are written by the `tensorboard` package's own `EventFileWriter` (no TensorFlow needed:
it then writes through TensorBoard's filesystem layer, which reaches gs:// through fsspec), with
tags verbatim ("dev/ndcg@10"). Its thread writes the records; `flush` waits for it.

An object store cannot append, so on gs:// every flush rewrites the whole event file and the
whole `metrics.jsonl` (read back when a resumed run opens it): the cost of a flush grows with
the run, which `flush_every_s` bounds. Local files are appended to.

`read_scalars` reads events back with TensorBoard's own reader (tests, eval tools).
"""

from __future__ import annotations

import atexit
import collections
import functools
import io
import json
import math
import operator
import os
import threading
import time
from typing import Any, Iterator, Mapping, TextIO

from absl import logging
from etils import epath
import jax
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.summary.writer import event_file_writer
import tqdm

from retrieval_jax import files

JSONL_FILE = "metrics.jsonl"
HPARAMS_FILE = "hparams.json"
HPARAMS_TAG = "config"

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

# fsspec protocols whose filesystem (gcsfs) has no append mode.
_NO_APPEND_PROTOCOLS = ("gs", "gcs")

# The event writer's thread would also flush on its own timer, concurrently with `flush`, and
# TensorBoard's GFile is not thread-safe where it rewrites whole objects (gs://); so in effect
# only `flush` and `close` flush.
_WRITER_THREAD_FLUSH_S = 365 * 24 * 3600.0

# Event file names carry the second they were opened in, then the host, the process and
# EventFileWriter's counter, which is not zero-padded ("...10" sorts before "...9"). TensorBoard
# reads a directory's files in name order, so a second file that this process opens on one
# logdir waits for a later second than the first: names then sort in write order.
_OPENED_AT: dict[str, float] = {}
_OPENED_AT_LOCK = threading.Lock()


def _default_enabled(enabled: bool | None) -> bool:
  return jax.process_index() == 0 if enabled is None else bool(enabled)


def _check_scalar(key: str, value: Any) -> None:
  """Raises ValueError naming `key` unless `value` is a real number or a 0-d real array.

  Looks at the shape and dtype only, so it costs no device-to-host transfer.
  """
  if not isinstance(key, str) or not key:
    raise ValueError(f"metric names must be non-empty strings, got {key!r}")
  if key == "step":
    raise ValueError('metric name "step" is reserved for the step in metrics.jsonl')
  if isinstance(value, (str, bytes)):
    raise ValueError(f"metric {key!r} is a string ({value!r}), not a number")
  shape = np.shape(value)
  if shape != ():
    raise ValueError(f"metric {key!r} must be a scalar, got shape {shape}")
  dtype = getattr(value, "dtype", None)
  if isinstance(value, complex) or (dtype is not None and np.dtype(dtype).kind == "c"):
    raise ValueError(f"metric {key!r} is complex ({value!r}), not a real number")


def _to_float(key: str, value: Any) -> float:
  """`value` as a Python float; `_check_scalar` has accepted it."""
  try:
    return float(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"metric {key!r} is not a number: {value!r}") from e


def _json_float(x: float) -> float | str:
  """Non-finite floats as strings: bare NaN / Infinity are not valid JSON."""
  if math.isfinite(x):
    return x
  return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _format_scalars(scalars: Mapping[str, float], sep: str) -> str:
  return sep.join(f"{k}={v:.4g}" for k, v in scalars.items())


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted key, leaf) pairs of nested mappings; ConfigDicts are read through `to_dict`."""
  if hasattr(tree, "to_dict") and not isinstance(tree, Mapping):
    tree = tree.to_dict()
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
      yield from _flatten(value, prefix=f"{name}.")
    else:
      yield name, value


def _json_value(value: Any) -> Any:
  """A JSON-serialisable stand-in for a config leaf: str() for anything JSON has no type for."""
  if isinstance(value, np.generic):
    value = value.item()
  if value is None or isinstance(value, (bool, int, str)):
    return value
  if isinstance(value, float):
    return _json_float(value)
  if isinstance(value, (list, tuple)):
    return [_json_value(v) for v in value]
  return str(value)


def _markdown_table(flat: Mapping[str, Any]) -> str:
  """A two-column markdown table, as TensorBoard's text plugin renders it."""

  def cell(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    # A bare "|" would end the cell and a newline the row.
    return text.replace("|", "\\|").replace("\n", "<br>")

  rows = [f"| {cell(k)} | {cell(v)} |" for k, v in flat.items()]
  return "\n".join(["| key | value |", "|---|---|", *rows])


def _scalar_summary(values: Mapping[str, float]) -> summary_pb2.Summary:
  """One `simple_value` per tag, the tags verbatim (float32 on disk, as TensorBoard stores it)."""
  return summary_pb2.Summary(
      value=[summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()])


def _text_summary(tag: str, text: str) -> summary_pb2.Summary:
  """One scalar string tensor for TensorBoard's text plugin, under `tag`."""
  tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                  string_val=[text.encode("utf-8")])
  metadata = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
  return summary_pb2.Summary(
      value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)])


class _NoAppendFileSystem:
  """TensorBoard's fsspec filesystem (what its GFile writes gs:// with), minus `append`.

  GFile writes every chunk after the first with `append` when its filesystem has one, and gcsfs
  cannot append: it warns and overwrites, so an event file would keep only its last record.
  Without `append`, GFile keeps the file in a local temporary file and uploads it whole on
  every flush.
  """

  def __init__(self, inner: Any):
    self._inner = inner

  def __getattr__(self, name: str) -> Any:
    if name == "append":
      raise AttributeError(name)
    return getattr(self._inner, name)


@functools.cache
def _use_no_append_filesystems() -> None:
  """Routes TensorBoard's gs:// writes through `_NoAppendFileSystem` (once per process)."""
  from tensorboard.compat import tf  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.tensorflow_stub.io import gfile  # pylint: disable=g-import-not-at-top

  if tf.io.gfile is not gfile:
    return  # TensorFlow is installed: TensorBoard writes with tf.io.gfile, which handles gs://
  for protocol in _NO_APPEND_PROTOCOLS:
    gfile.register_filesystem(protocol, _NoAppendFileSystem(gfile.FSSpecFileSystem()))


def _seconds_to_wait(last_opened: float | None, now: float) -> float:
  """How long to wait until the second after the one `last_opened` was in (0 if it is past)."""
  if last_opened is None or int(now) > int(last_opened):
    return 0.0
  return int(last_opened) + 1 - now


class _EventFile:
  """A new TensorBoard event file in `logdir`."""

  def __init__(self, logdir: epath.Path):
    _use_no_append_filesystems()
    key = os.fspath(logdir)
    with _OPENED_AT_LOCK:
      time.sleep(_seconds_to_wait(_OPENED_AT.get(key), time.time()))
      self._writer = event_file_writer.EventFileWriter(key, flush_secs=_WRITER_THREAD_FLUSH_S)
      _OPENED_AT[key] = time.time()

  def _add(self, step: int, summary: summary_pb2.Summary) -> None:
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def add_scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One event for the whole step; tags are the names verbatim."""
    self._add(step, _scalar_summary(values))

  def add_text(self, tag: str, text: str, step: int) -> None:
    """Tag `<tag>/text_summary` for the text plugin, as tensorboardX's add_text names it."""
    self._add(step, _text_summary(f"{tag}/text_summary", text))

  def flush(self) -> None:
    """Returns once every event added so far is in the file (on gs://: uploaded)."""
    self._writer.flush()

  def close(self) -> None:
    """Flushes, stops the writer's thread and closes the file."""
    self._writer.close()


class _RewrittenTextFile:
  """A text file on an object store, which cannot append: kept in memory (with what it held
  when opened) and written whole on flush."""

  def __init__(self, path: epath.Path):
    self._path = path
    self._text = io.StringIO()
    if path.exists():
      self._text.write(path.read_text(encoding="utf-8"))
    self._dirty = False

  def write(self, text: str) -> None:
    self._text.write(text)
    self._dirty = True

  def flush(self) -> None:
    if self._dirty:
      self._path.write_text(self._text.getvalue(), encoding="utf-8")
      self._dirty = False

  def close(self) -> None:
    self.flush()


def _open_for_append(path: epath.Path) -> TextIO | _RewrittenTextFile:
  """`path` opened to append text: a file in append mode, or rewritten whole if remote."""
  if files.is_remote(path):
    return _RewrittenTextFile(path)
  return path.open("a", encoding="utf-8")


def _write_text_atomically(path: epath.Path, text: str) -> None:
  """Replaces `path` by `text`; a reader never sees a half-written file."""
  if files.is_remote(path):
    path.write_text(text, encoding="utf-8")  # an object appears whole when its upload ends
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(path)


class MetricWriter:
  """Writes scalar metrics to TensorBoard events, a JSONL file and the log, from process 0 only.

  Every `write_scalars` call becomes one TensorBoard event (tag = metric name, verbatim: e.g.
  "dev/ndcg@10"), one JSON line `{"step": step, ...}` appended to `logdir/metrics.jsonl`, and
  one `absl.logging.info` line. A resumed run appends to the same JSONL file (on gs://: reads
  it when opened and rewrites it whole on each flush) and starts a new event file beside the
  old ones.
  """

  def __init__(self, logdir: epath.PathLike, *, enabled: bool | None = None,
               flush_every_s: float = 10.0):
    """Opens the writers (on process 0 only).

    Args:
      logdir: events go here (e.g. `workdir/tensorboard`, local or `gs://...`); the JSONL to
        `logdir/metrics.jsonl`.
      enabled: whether this process writes; None means `jax.process_index() == 0`. A disabled
        writer creates no directory or file and logs nothing.
      flush_every_s: a write flushes the files when the last flush is at least this old;
        `flush` and `close` always do, and so does interpreter exit. On gs:// a flush uploads
        both files whole.
    """
    if flush_every_s < 0:
      raise ValueError(f"flush_every_s must be >= 0, got {flush_every_s}")
    self.logdir = epath.Path(logdir)
    self.enabled = _default_enabled(enabled)
    self._flush_every_s = float(flush_every_s)
    self._closed = False
    self._events: _EventFile | None = None
    self._jsonl: TextIO | _RewrittenTextFile | None = None
    self._last_flush = time.monotonic()
    if self.enabled:
      self.logdir.mkdir(parents=True, exist_ok=True)
      self._events = _EventFile(self.logdir)
      self._jsonl = _open_for_append(self.logdir / JSONL_FILE)
      atexit.register(self.close)  # a loop that dies without closing still leaves whole files

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError(f"MetricWriter({self.logdir}) is closed")

  def write_scalars(self, step: int, scalars: Mapping[str, float | np.ndarray | jax.Array]
                    ) -> None:
    """Writes `scalars` at `step`; nothing is written if any value is not a scalar.

    Args:
      step: the training step (any integer, including NumPy / 0-d JAX integers).
      scalars: metric name → number, or 0-d NumPy / JAX array (fetched to the host here).

    Raises:
      ValueError: naming the key of a value that is not a real scalar.
      RuntimeError: after `close`.
    """
    self._check_open()
    step = operator.index(step)
    for key, value in scalars.items():
      _check_scalar(key, value)
    if not self.enabled or not scalars:
      return
    values = {key: _to_float(key, value) for key, value in scalars.items()}

    self._events.add_scalars(step, values)

    record = {"step": step, **{k: _json_float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    logging.info("step %d: %s", step, _format_scalars(values, " "))
    if time.monotonic() - self._last_flush >= self._flush_every_s:
      self.flush()

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Writes the flattened config as a "config" text summary (a markdown table) at step 0,
    and to `logdir/hparams.json` (replaced if it exists, e.g. on resume).

    Args:
      hparams: a nested mapping or `ml_collections.ConfigDict`; keys are joined with ".".
    """
    self._check_open()
    if not self.enabled:
      return
    flat = {key: _json_value(value) for key, value in _flatten(hparams)}
    self._events.add_text(HPARAMS_TAG, _markdown_table(flat), 0)
    _write_text_atomically(self.logdir / HPARAMS_FILE,
                           json.dumps(flat, indent=2, allow_nan=False) + "\n")
    self.flush()

  def flush(self) -> None:
    """Pushes everything written so far to the event and JSONL files."""
    if self._closed or not self.enabled:
      return
    self._events.flush()
    self._jsonl.flush()
    self._last_flush = time.monotonic()

  def close(self) -> None:
    """Flushes and closes the files; later calls do nothing."""
    if self._closed:
      return
    self._closed = True
    if self.enabled:
      atexit.unregister(self.close)
      self._events.close()  # flushes
      self._jsonl.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


def _read_scalars_tensorboard(logdir: epath.Path) -> dict[str, list[tuple[int, float]]]:
  """Every scalar of every event file in `logdir`, via TensorBoard's EventAccumulator."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  # size_guidance 0 keeps every value; the default samples each tag down to 10,000.
  acc = event_accumulator.EventAccumulator(
      os.fspath(logdir), size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _read_scalars_jsonl(logdir: epath.Path) -> dict[str, list[tuple[int, float]]]:
  """Every scalar in `logdir/metrics.jsonl` (float64, where the events hold float32)."""
  out: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
  path = epath.Path(logdir) / JSONL_FILE
  if not path.exists():
    return {}
  lines = path.read_text(encoding="utf-8").split("\n")
  # Text after the last newline is a line cut short by a killed run (or nothing): it is skipped.
  for line_no, line in enumerate(lines[:-1], start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      step = int(record.pop("step"))
      for key, value in record.items():
        out[key].append((step, _NON_FINITE[value] if isinstance(value, str) else float(value)))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(f"{path}:{line_no}: not a metrics line: {line!r}") from e
  if lines[-1].strip():
    logging.warning("%s: skipped an unterminated last line %r", path, lines[-1])
  return dict(out)


def read_scalars(logdir: epath.PathLike) -> dict[str, list[tuple[int, float]]]:
  """Reads back the scalars a `MetricWriter` wrote to `logdir`: tag → [(step, value)].

  Reads all the event files in `logdir` (local or gs://) with TensorBoard's own
  `EventAccumulator`, so it also proves TensorBoard can read them; values are float32, as
  events store them. Lists are sorted by step; a step written twice (a resumed run) keeps both
  values, in the order written.

  Raises:
    FileNotFoundError: if `logdir` is not a directory.
  """
  logdir = epath.Path(logdir)
  if not logdir.is_dir():
    raise FileNotFoundError(f"no metrics directory {logdir}")
  scalars = _read_scalars_tensorboard(logdir)
  # sorted() is stable: equal steps stay in file order, i.e. the order they were written.
  return {tag: sorted(points, key=lambda p: p[0]) for tag, points in scalars.items()}


class ProgressBar:
  """A tqdm bar over training steps that shows the latest metrics; disabled on processes other
  than 0 or when enabled=False (then every method does nothing)."""

  def __init__(self, total_steps: int, initial_step: int = 0, *, enabled: bool | None = None,
               desc: str = "train", file: TextIO | None = None):
    """Opens the bar at `initial_step` of `total_steps` (a resumed run starts part way).

    Args:
      total_steps: the step the bar is full at.
      initial_step: where the bar starts; the rate counts only steps taken after it.
      enabled: whether to show a bar; None means `jax.process_index() == 0`.
      desc: the bar's label.
      file: where tqdm writes; None means standard error.
    """
    self.enabled = _default_enabled(enabled)
    self._bar: tqdm.tqdm | None = None
    if self.enabled:
      self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc=desc, unit="step",
                            file=file, dynamic_ncols=True)

  @property
  def n(self) -> int | None:
    """The step the bar shows; None when disabled."""
    return None if self._bar is None else self._bar.n

  def update(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
    """Moves the bar to `step` (absolute; it may jump several steps) and shows `postfix`."""
    if self._bar is None:
      return
    if postfix:
      values = {k: float(v) for k, v in postfix.items()}
      self._bar.set_postfix_str(_format_scalars(values, ", "), refresh=False)
    delta = operator.index(step) - self._bar.n
    if delta > 0:
      self._bar.update(delta)  # redraws at most every mininterval, so cheap to call every step
    else:
      # Same step (a new postfix) or backwards (should not happen): set and redraw.
      self._bar.n = operator.index(step)
      self._bar.refresh()

  def close(self) -> None:
    """Closes the bar; later calls do nothing."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> ProgressBar:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()
