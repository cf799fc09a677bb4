"""Orbax checkpoints of the train state.

The only Orbax user in the library. A workdir (local or `gs://bucket/run`) looks like:

  workdir/config.json            # `run_config.save_config`: the ml_collections config as JSON
  workdir/checkpoints/<step>/    # one Orbax checkpoint per saved step:
      state/                     #   the state pytree (params, optimizer state, step, RNG)
      extra/                     #   a small JSON dict (data position, seeds, ...)
      host/                      #   optional host numpy arrays (ANCE's negatives in use)
  workdir/best_checkpoint/<step>/  # with train.select_best: the params of the best evaluation
      state/                     #   {"params", "step"} only
      extra/                     #   the metric, its value and every metric of that evaluation

A state is any pytree of arrays, e.g.

  state = dict(params=params, opt_state=opt_state, step=jnp.int32(step),
               rng=jax.random.key_data(key))   # typed keys: store their uint32 key data

and is restored with `jax.random.wrap_key_data(state["rng"])`. Restoring takes abstract
targets with shardings, so arrays are read straight onto the devices of the *current* mesh,
whatever mesh wrote them: a run saved on (8, 1) resumes on (4, 2) or on one device.

Typical use by the training loop:

  ckpt = Checkpointer(workdir, max_to_keep=3, save_interval_steps=1000)
  if ckpt.latest_step() is not None:                      # resume
    state, extra = ckpt.restore(abstract_state=abstract, shardings=shardings)
  for step in ...:
    ckpt.save(step, state, extra={"data_position": pos})  # no-op between intervals
  ckpt.save(last_step, state, extra=..., force=True)      # always keep the end
  ckpt.close()                                            # waits for async writes
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_SUBDIR = "checkpoints"
BEST_SUBDIR = "best_checkpoint"
# The step name that selects the best checkpoint (`restore(BEST, ...)`, `main.py --step=best`).
BEST = "best"


def _is_sharding(x: Any) -> bool:
  return isinstance(x, jax.sharding.Sharding)


def _check_no_typed_keys(tree: Any) -> None:
  """Typed PRNG keys have no on-disk format; fail early with the fix instead of deep in Orbax."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      raise TypeError(f"state leaf {jax.tree_util.keystr(path)} is a typed PRNG key; store "
                      "jax.random.key_data(key) and rebuild it with jax.random.wrap_key_data")


def restore_targets(abstract_state: Any, shardings: Any = None) -> Any:
  """`jax.ShapeDtypeStruct` targets carrying the sharding each array is restored onto.

  Args:
    abstract_state: The state's structure with arrays or `ShapeDtypeStruct` leaves, e.g.
      `jax.eval_shape(init_state, ...)`.
    shardings: A single `Sharding` for every leaf, or a tree of them matching
      `abstract_state` or a prefix of it (one sharding then covers a whole subtree, e.g. a
      replicated `opt_state`). None: each leaf's own `.sharding`, else the first local device.

  Returns:
    A tree like `abstract_state` of `ShapeDtypeStruct(shape, dtype, sharding=...)`.
  """
  # Without a sharding Orbax would fall back to the one saved in the checkpoint, which names
  # devices of the writer's mesh; a single local device is always valid instead.
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def target(leaf, sharding=None):
    sharding = sharding or getattr(leaf, "sharding", None) or default
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  if shardings is None or _is_sharding(shardings):
    return jax.tree_util.tree_map(lambda leaf: target(leaf, shardings), abstract_state)
  return jax.tree_util.tree_map(
      lambda sharding, subtree: jax.tree_util.tree_map(lambda x: target(x, sharding), subtree),
      shardings, abstract_state, is_leaf=lambda x: x is None or _is_sharding(x))


class Checkpointer:
  """Periodic, asynchronous, keep-last-N checkpoints in `workdir/checkpoints`."""

  def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True):
    """Opens (or creates) the checkpoint directory of `workdir`.

    Args:
      workdir: The run directory; checkpoints go to its `checkpoints` subdirectory.
      max_to_keep: Keep only the newest N steps (None: keep all).
      save_interval_steps: `save` writes only steps divisible by this, unless forced.
      async_save: Write in a background thread so training continues during the write;
        `wait`, `restore` and `close` wait for it.
    """
    # Orbax wants absolute paths (it also accepts gs:// via epath, which abspath would break).
    workdir = str(workdir)
    root = workdir if "://" in workdir else os.path.abspath(workdir)
    self.directory = os.path.join(root, CHECKPOINT_SUBDIR)
    self.best_directory = os.path.join(root, BEST_SUBDIR)
    self._async = async_save
    self._best_manager = None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save)
    self._interval = save_interval_steps
    self._item_names = ("state", "extra", "host")
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=self._item_names)

  def save(self, step: int, state: Any, *, extra: dict[str, Any] | None = None,
           host: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Starts saving `state` and `extra` at `step` if the interval (or `force`) says so.

    Args:
      step: The training step; the checkpoint's name.
      state: A pytree of arrays (sharded or not). Arrays must not be donated or deleted
        before the asynchronous write has copied them; Orbax copies them to host first.
      extra: JSON-serialisable dict stored beside the state (data position, seeds, ...).
      host: Optional dict of host numpy arrays, the same in every process (too large for
        JSON: e.g. the hard negatives a run trains on); read back by `restore_host`.
      force: Save even if `step` is off the interval (the final step, before a stop).

    Returns:
      Whether a save was started.
    """
    # Orbax also saves the first step it sees, whatever the interval; a resumed run would then
    # write an off-interval checkpoint at every restart, so the interval is checked here.
    if not force and int(step) % self._interval:
      return False
    _check_no_typed_keys(state)
    items = dict(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra or {})))
    if host:
      items["host"] = ocp.args.StandardSave(dict(host))
    return self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def wait(self) -> None:
    """Blocks until every started save is on disk (and older steps are pruned)."""
    self._manager.wait_until_finished()
    if self._best_manager is not None:
      self._best_manager.wait_until_finished()

  def latest_step(self) -> int | None:
    """The newest saved step, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The saved steps, ascending."""
    return sorted(self._manager.all_steps())

  def restore(self, step: int | str | None = None, *, abstract_state: Any,
              shardings: Any = None, partial: bool = False) -> tuple[Any, dict[str, Any]]:
    """Reads a checkpoint directly onto the given shardings.

    Args:
      step: The step to restore; None: the latest; `BEST`: the best checkpoint
        (`save_best`; params and step only, so `partial` must be set).
      abstract_state: The state's structure, shapes and dtypes (see `restore_targets`).
      shardings: Where each array goes (see `restore_targets`); may differ from the mesh
        that wrote the checkpoint.
      partial: `abstract_state` is a part of the saved state (e.g. only `params` and `step`
        for evaluation): only those arrays are read, the rest (optimizer moments) never is.

    Returns:
      (state, extra): the state shaped like `abstract_state`, and the saved extra dict.

    Raises:
      FileNotFoundError: There is no checkpoint in the directory (the message names it).
      ValueError: `step` was not saved (the message lists the saved steps).
    """
    self.wait()  # a step still being written is not yet listed, nor readable
    directory = self.directory
    if step == BEST:
      if not partial:
        raise ValueError("the best checkpoint holds only params and step: restore it with "
                         "partial=True")
      record = self.best_record()
      if record is None:
        raise FileNotFoundError(f"no best checkpoint in {self.best_directory} (the run "
                                "selects none without train.select_best)")
      directory, steps, step = self.best_directory, [record["step"]], record["step"]
    else:
      steps = self.all_steps()
      if not steps:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
      step = steps[-1] if step is None else int(step)
    if step not in steps:
      raise ValueError(f"no checkpoint for step {step} in {self.directory}; saved steps: {steps}")
    targets = restore_targets(abstract_state, shardings)
    if partial:
      state_args = ocp.args.PyTreeRestore(
          item=targets, restore_args=ocp.checkpoint_utils.construct_restore_args(targets),
          partial_restore=True)
    else:
      state_args = ocp.args.StandardRestore(targets)
    args = ocp.args.Composite(state=state_args, extra=ocp.args.JsonRestore())
    if partial:
      # A manager that saved here has the standard handler bound to "state", which takes no
      # partial restore; a fresh reader binds the handler the arguments ask for.
      with ocp.CheckpointManager(directory, item_names=self._item_names) as reader:
        restored = reader.restore(step, args=args)
    else:
      restored = self._manager.restore(step, args=args)
    return restored["state"], dict(restored["extra"] or {})

  def restore_host(self, step: int) -> dict[str, Any] | None:
    """The host arrays saved with `step` (numpy, dtypes kept), or None if it has none."""
    self.wait()
    # The item's directory, not `item_metadata`: a manager that has not saved in this process
    # has no handler registered for the item and reports no metadata for it.
    if not (epath.Path(self.directory) / str(int(step)) / "host").exists():
      return None
    restored = self._manager.restore(int(step),
                                     args=ocp.args.Composite(host=ocp.args.StandardRestore()))
    return dict(restored["host"])

  def _best(self) -> ocp.CheckpointManager:
    if self._best_manager is None:
      options = ocp.CheckpointManagerOptions(max_to_keep=1,
                                             enable_async_checkpointing=self._async)
      self._best_manager = ocp.CheckpointManager(self.best_directory, options=options,
                                                 item_names=("state", "extra"))
    return self._best_manager

  def save_best(self, step: int, state: Any, record: dict[str, Any]) -> None:
    """Replaces the best checkpoint with `state` (e.g. {"params", "step"}) at `step`.

    Args:
      step: The training step the state is of.
      state: What evaluation needs: `restore(BEST, partial=True)` reads it back.
      record: JSON facts kept beside it (the metric, its value, the evaluation's metrics);
        `best_record` returns them with `step`.
    """
    _check_no_typed_keys(state)
    items = dict(state=ocp.args.StandardSave(state),
                 extra=ocp.args.JsonSave(dict(record, step=int(step))))
    self._best().save(int(step), args=ocp.args.Composite(**items), force=True)

  def best_record(self) -> dict[str, Any] | None:
    """The record `save_best` kept with the best checkpoint (with its `step`), or None."""
    if self._best_manager is None and not epath.Path(self.best_directory).exists():
      return None  # nothing to read: do not create the directory
    manager = self._best()
    manager.wait_until_finished()
    step = manager.latest_step()
    if step is None:
      return None
    restored = manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
    return dict(restored["extra"] or {}, step=int(step))

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's threads."""
    self._manager.close()
    if self._best_manager is not None:
      self._best_manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def latest_step(workdir: str | os.PathLike) -> int | None:
  """The newest step saved in `workdir`, or None; creates nothing when there is none."""
  directory = epath.Path(workdir) / CHECKPOINT_SUBDIR
  if not directory.exists():
    return None
  with Checkpointer(workdir, async_save=False) as ckpt:
    return ckpt.latest_step()


def has_best(workdir: str | os.PathLike) -> bool:
  """Whether `workdir` holds a best checkpoint (`Checkpointer.save_best`)."""
  directory = epath.Path(workdir) / BEST_SUBDIR
  if not directory.exists():
    return False
  with Checkpointer(workdir, async_save=False) as ckpt:
    return ckpt.best_record() is not None
