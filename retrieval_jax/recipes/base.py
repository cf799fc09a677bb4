"""What a recipe hands the training loop: state, frozen inputs, step, batches, hooks, models.

`retrieval_jax.train` is the one loop; a recipe module (`recipes/dpr.py`, ...) composes
models, losses and data into a `Recipe`. The loop owns everything generic: compiling the step
with shardings, checkpoints, logging, the non-finite check, evaluation through the evaluator
registry (`retrieval_jax.evaluators`), export.

A recipe module provides:
  build(config, workdir, mesh) -> Recipe                    (trained recipes)
  restore_eval_models(config, workdir, step) -> (EvalModels, step)
and sets `TRAINS = False` when it has no training steps (an evaluation-only recipe such as
`zeroshot`), in which case it provides `eval_models(config) -> EvalModels` instead of `build`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Protocol

import jax
import numpy as np


class Batcher(Protocol):
  """The input pipeline: deterministic batches by step (see `data.pairs.PairBatcher`).

  `host_keys`: batch entries that describe the batch for the host (logs, checks) and never
  reach the step.
  """
  steps_per_epoch: int
  host_keys: frozenset[str]

  def iterate(self, start_step: int, end_step: int) -> Iterator[tuple[int, dict]]: ...
  def position(self, step: int) -> dict[str, int]: ...
  def check_position(self, position: Mapping[str, int]) -> None: ...


class Hook:
  """Work the loop runs between steps (ANCE's negative refresh). Every method is a no-op
  here; a hook overrides what it needs."""

  def start(self, step: int, state: Any, host: dict[str, np.ndarray] | None) -> None:
    """Before the first step; `host`: the arrays the restored checkpoint holds (or None)."""

  def after_step(self, step: int, state: Any) -> None:
    """After `step` updates, before the checkpoint and evaluation of that step."""

  def scalars(self, step: int) -> dict[str, float]:
    """Values logged with the training metrics."""
    del step
    return {}

  def checkpoint_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON facts, host arrays) saved with each checkpoint."""
    return {}, {}

  def finish(self) -> dict[str, Any]:
    """After the last step: a summary for the run's info."""
    return {}

  def report(self, info: Mapping[str, Any]) -> str | None:
    """A text table for the console at the end of the run (from `finish`'s info), or None."""
    del info
    return None

  def close(self) -> None:
    """Releases threads; called whatever happened."""


@dataclasses.dataclass(frozen=True)
class FrozenInput:
  """A model the step reads but never trains (a teacher, a frozen copy).

  Passed to the step as its second argument: sharded by the logical-axis rules, not donated,
  no optimizer state, never saved in checkpoints; `load` restores it from its own source on
  every start (fresh or resumed), and its fingerprint is checked on resume.

  Attributes:
    abstract: Boxed shapes with logical axis names (e.g. `spec.abstract_params()`).
    load: () -> host arrays of that shape (from an HF directory, a checkpoint path, or the
      initial weights).
    source: Where it comes from, for logs and errors.
  """
  abstract: Any
  load: Callable[[], Any]
  source: str


@dataclasses.dataclass
class EvalModels:
  """What the evaluators may use, by role; None where a recipe has no such model.

  Attributes:
    query: Single-vector query encoder (`encode.LoadedEncoder`).
    passage: Single-vector passage encoder (often the same object as `query`).
    extra: Further roles registered by later recipes (token encoders, language models).
  """
  query: Any = None
  passage: Any = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def get(self, role: str) -> Any:
    return getattr(self, role) if role in ("query", "passage") else self.extra.get(role)

  def roles(self) -> list[str]:
    return [r for r in ("query", "passage") if getattr(self, r) is not None] + sorted(
        r for r, m in self.extra.items() if m is not None)


@dataclasses.dataclass
class Recipe:
  """A recipe ready to train.

  Attributes:
    name: The recipe (`dpr`, ...).
    total_steps: Optimizer updates in the whole run (the schedule's length).
    batcher: Process-local numpy batches by step.
    abstract_state: `ShapeDtypeStruct` tree of the train state (for restoring).
    state_shardings: NamedSharding tree of the train state.
    batch_sharding: The sharding of every batch array (rows over `data`).
    init_state: () -> the step-0 state, placed with `state_shardings`.
    train_step: (state, frozen, batch) -> (state, metrics); pure, compiled by the loop.
      Metrics are float32 scalars and include `state.REQUIRED_METRICS`.
    eval_models: (state) -> `EvalModels` for the evaluators (called on every process: it may
      gather sharded parameters).
    export: (state, out_dir) -> writes the trained model in an interchange format; called on
      every process (gathering sharded parameters is a collective), process 0 writes.
    frozen: Name -> `FrozenInput`; the step's second argument is a dict of their arrays.
    eval_roles: The `EvalModels` roles `eval_models` fills (checked against the evaluators'
      needs before training starts).
    info: Facts for the log (examples, parameters, ...).
    hooks: Called between steps, saved in checkpoints (see `Hook`).
  """
  name: str
  total_steps: int
  batcher: Batcher
  abstract_state: Any
  state_shardings: Any
  batch_sharding: jax.sharding.Sharding
  init_state: Callable[[], Any]
  train_step: Callable[[Any, Any, dict], tuple[Any, dict]]
  eval_models: Callable[[Any], EvalModels]
  export: Callable[[Any, str], Any]
  frozen: dict[str, FrozenInput] = dataclasses.field(default_factory=dict)
  eval_roles: tuple[str, ...] = ("query", "passage")
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  hooks: list[Hook] = dataclasses.field(default_factory=list)


def count_params(tree: Any) -> int:
  """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
