"""What a recipe hands the training loop: state, step, batches, evaluation and export.

`retrieval_jax.train` is the one loop; a recipe module (`recipes/dpr.py`, ...) composes
models, losses and data into a `Recipe`. The loop owns everything generic: compiling the step
with shardings, checkpoints, logging, the non-finite check, periodic evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Protocol

import jax
import numpy as np


# Batch entries that describe the batch for the host (logs, checks) and never reach the step.
HOST_KEYS = frozenset({"example_index", "negatives_version"})


class Batcher(Protocol):
  """The input pipeline: deterministic batches by step (see `data.pairs.PairBatcher`)."""
  steps_per_epoch: int

  def iterate(self, start_step: int, end_step: int) -> Iterator[tuple[int, dict]]: ...
  def position(self, step: int) -> dict[str, int]: ...
  def check_position(self, position: Mapping[str, int]) -> None: ...


class Hook(Protocol):
  """Work the loop runs between steps (ANCE's negative refresh, `negative_refresh`)."""

  def start(self, step: int, state: Any, host: dict[str, np.ndarray] | None) -> None:
    """Before the first step; `host`: the arrays the restored checkpoint holds (or None)."""

  def after_step(self, step: int, state: Any) -> None:
    """After `step` updates, before the checkpoint and evaluation of that step."""

  def scalars(self, step: int) -> dict[str, float]:
    """Values logged with the training metrics."""

  def checkpoint_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON facts, host arrays) saved with each checkpoint."""

  def finish(self) -> dict[str, Any]:
    """After the last step: a summary for the run's info."""

  def close(self) -> None:
    """Releases threads; called whatever happened."""


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
    train_step: (state, batch) -> (state, metrics); pure, compiled by the loop. Metrics are
      float32 scalars and include `loss` and `finite`.
    evaluate: (state, out_dir or None) -> flat metrics (`ndcg@10`, ...) on the eval split.
    export: (state, out_dir) -> writes the trained model in an interchange format; called on
      every process (gathering sharded parameters is a collective), process 0 writes.
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
  train_step: Callable[[Any, dict], tuple[Any, dict]]
  evaluate: Callable[[Any, str | None], dict[str, float]]
  export: Callable[[Any, str], Any]
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  hooks: list[Hook] = dataclasses.field(default_factory=list)


def count_params(tree: Any) -> int:
  """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
