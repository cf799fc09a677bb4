"""The run's config beside its checkpoints: `workdir/config.json`, and what a resume may change.

A run is its config: resuming one with another learning rate, batch size or data would
continue a schedule and a data order that no config describes. So a resumed run compares its
config with the saved one and refuses any difference outside `SAFE_TO_CHANGE` (logging,
evaluation, checkpointing, the stop step, the mesh and memory-only switches), listing the
keys; `allow_changes` accepts them knowingly and keeps the old file as
`config.step_<N>.json`.

Paths are `etils.epath` paths: `workdir` may be local or `gs://bucket/run`.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Mapping

import jax
import ml_collections
from etils import epath

CONFIG_FILE = "config.json"

# Dotted keys (a key covers its subtree) a resumed run may change without changing what is
# trained: where and how often it logs, evaluates and checkpoints, when this invocation stops,
# which devices hold the state, and switches that trade memory for time with the same result.
SAFE_TO_CHANGE = (
    "note",
    "evals",
    "mesh",
    "data.tfds_dir",
    "train.stop_at_step",
    "train.log_every_steps",
    "train.eval_every_steps",
    "train.eval_at_start",
    "train.select_best",
    "train.select_mode",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.async_checkpoints",
    "train.progress",
    "train.export",
    "model.remat",
    "loss.grad_cache",
    "loss.chunk_size",
)


class InputError(ValueError):
  """Bad input found while a run is set up: a config key, a file, a data set, a model.

  Its message names what is wrong; `main.py` prints it as one line and exits with status 1
  (a traceback is for bugs). The original error is its `__cause__`.
  """


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
  """Raises the `ValueError`s and `FileNotFoundError`s of setup code as `InputError`s.

  Wraps the code that reads the config and its inputs before any step or evaluation runs,
  where such an error is the user's input and not a bug.
  """
  try:
    yield
  except InputError:
    raise
  except (ValueError, FileNotFoundError) as error:
    raise InputError(str(error)) from error


class ConfigChangedError(InputError):
  """A resumed run's config differs from the saved one in keys that change the training."""


def as_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """The config as `config.json` holds it (tuples become lists, other leaves strings)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  return json.loads(json.dumps(config, sort_keys=True, default=str))


def save_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict | dict) -> str:
  """Writes `config` as `workdir/config.json` (process 0 only) and returns the path."""
  path = epath.Path(workdir) / CONFIG_FILE
  if jax.process_index() == 0:
    _write_json(path, as_json(config))
  return os.fspath(path)


def _write_json(path: epath.Path, value: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  text = json.dumps(value, indent=2, sort_keys=True) + "\n"
  if "://" in os.fspath(path):
    path.write_text(text)  # an object store replaces an object whole: no partial file
    return
  # Write then rename, so a crash never leaves a half-written config next to checkpoints.
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def is_training_workdir(path: str) -> bool:
  """Whether `path` is a `main.py` workdir (config.json and checkpoints/), not a model
  directory, a packaged name (`minilm`) or a hub id."""
  if "://" not in path and not os.path.isdir(path):
    return False  # a packaged name or hub id: never ask a remote filesystem
  root = epath.Path(path)
  return (root / CONFIG_FILE).is_file() and (root / "checkpoints").is_dir()


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config `save_config` wrote in `workdir`.

  Raises:
    FileNotFoundError: Naming the missing `config.json`.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"no {CONFIG_FILE} in {workdir} (expected {path})")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  if isinstance(tree, Mapping) and tree:
    for key, value in tree.items():
      yield from _leaves(value, f"{prefix}{key}.")
  else:
    yield prefix[:-1], tree


def _is_safe(key: str) -> bool:
  return any(key == safe or key.startswith(safe + ".") for safe in SAFE_TO_CHANGE)


def changed_keys(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """Dotted keys whose value differs between two JSON configs (added and removed ones too),
  outside `SAFE_TO_CHANGE`, sorted."""
  old, new = dict(_leaves(as_json(saved))), dict(_leaves(as_json(current)))
  return sorted(key for key in old.keys() | new.keys()
                if old.get(key, KeyError) != new.get(key, KeyError) and not _is_safe(key))


def _describe(key: str, saved: dict, current: dict) -> str:
  old, new = dict(_leaves(saved)), dict(_leaves(current))
  show = lambda tree: json.dumps(tree[key]) if key in tree else "(absent)"
  return f"{key}: {show(old)} -> {show(new)}"


def check_resume(workdir: str | os.PathLike, config: ml_collections.ConfigDict, step: int, *,
                 allow_changes: bool = False) -> list[str]:
  """Compares `config` with the one saved in `workdir` before resuming at `step`.

  Args:
    workdir: The run directory.
    config: The config of this invocation.
    step: The checkpoint being resumed.
    allow_changes: Accept differences outside `SAFE_TO_CHANGE`: the saved config is kept as
      `config.step_<step>.json` (process 0) before the new one replaces it.

  Returns:
    The keys that changed outside `SAFE_TO_CHANGE` (empty when none did).

  Raises:
    ConfigChangedError: Listing each changed key with its old and new value, unless
      `allow_changes`.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return []
  saved, current = json.loads(path.read_text()), as_json(config)
  changed = changed_keys(saved, current)
  if not changed:
    return []
  if not allow_changes:
    listed = "; ".join(_describe(key, saved, current) for key in changed)
    raise ConfigChangedError(
        f"resuming {workdir} at step {step} with a config that differs from its "
        f"{CONFIG_FILE} in {listed}. Use the saved values, a new --workdir, or "
        "--allow_config_change to continue with the new ones")
  if jax.process_index() == 0:
    _write_json(path.with_name(f"config.step_{int(step)}.json"), saved)
  return changed
