"""The one training loop: every recipe's state and step, sharded over the mesh, checkpointed.

`run(config, workdir, mode)` is what `main.py` calls. The loop is generic; the recipe
(`retrieval_jax.recipes.<config.recipe>`) supplies the state, the pure step, the batches and
the evaluation. What the loop guarantees for every recipe:

- the step `(state, frozen, batch) -> (state, metrics)` is `jax.jit(step, in_shardings=...,
  out_shardings=..., donate_argnums=0)` over the config's ('data', 'model') mesh, with batches
  assembled from per-process slices; its contract (`recipes.state.check_step`) is checked by
  tracing once before it compiles;
- frozen inputs (`recipes.base.FrozenInput`) are loaded from their own source on every start,
  sharded by the logical-axis rules, never donated or saved; a resumed run checks that they
  are the ones it started with;
- invalid configs fail in `recipe.build`, before anything compiles, naming the key;
- resume: the latest checkpoint in `workdir` is restored (onto the current mesh, whatever mesh
  wrote it) and the data pipeline continues at the same position, so a resumed run equals an
  uninterrupted one; a config that differs from the saved `config.json` outside
  `run_config.SAFE_TO_CHANGE` is refused (`allow_config_change` accepts it);
- preemption: on SIGTERM every process saves a checkpoint of the same step and `Preempted`
  is raised (`retrieval_jax.preemption`); rerunning resumes from it;
- `workdir` may be local or `gs://bucket/run` (`etils.epath` paths throughout);
- metrics are fetched from the devices only at log, checkpoint and eval points (asynchronous
  dispatch keeps the host ahead otherwise); a non-finite loss there stops the run with
  `NonFiniteLossError` before any checkpoint of the bad state is written;
- console progress bar, log lines and TensorBoard events under `workdir/tensorboard`;
- `config.evals` (the evaluator registry, `retrieval_jax.evaluators`) every
  `train.eval_every_steps` and at the end (`train_and_eval`), under
  `workdir/eval/step_<N>/<name>/`, logged as `<name>/<metric>`; a HF export under
  `workdir/export/`;
- the recipe's hooks (`recipes.base.Hook`, e.g. ANCE's negative refresh) run between steps,
  log with the metrics and save what they hold in every checkpoint (restored on resume);
- model selection: with `train.select_best="<evaluator>/<metric>"` (`select_mode` max | min)
  every evaluation (step 0 too, with `train.eval_at_start`) that improves the metric saves the
  params to `workdir/best_checkpoint`; the run's final metrics are that evaluation's, the
  export is of those params, and `--mode=eval` evaluates them unless a step is named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
# Importing TFDS swaps `builtins.__import__` process-wide for a while (etils' lazy_imports), and
# an import in another thread meanwhile gets a LazyModule: Orbax's async save (humanize's
# `from math import log`) failed that way when the first evaluation imported TFDS during the
# final save (WORKSPACE, "Contriever"). Imported here, before the loop starts any thread.
import tensorflow_datasets  # pylint: disable=unused-import  # noqa: F401

from retrieval_jax import checkpoint, evaluators, files, metric_writer, preemption, recipes
from retrieval_jax import run_config, sharding
from retrieval_jax.recipes import state as state_lib

logger = logging.getLogger(__name__)

MODES = ("train", "eval", "train_and_eval")


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN or infinite; the run stopped without saving it."""


@dataclasses.dataclass
class TrainResult:
  """What a call of `train` did."""
  step: int                                  # the last step trained (== state step)
  train_metrics: dict[str, float]            # means over the last logging interval
  eval_metrics: dict[str, float] | None      # the final evaluation, if one ran
  stopped_early: bool                        # train.stop_at_step ended it before the schedule
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  reports: list[str] = dataclasses.field(default_factory=list)  # hooks' console tables
  state: Any = None                          # the final train state (on the mesh)
  frozen: Any = None                         # the frozen inputs the steps read


def global_batch(local: dict[str, np.ndarray], batch_sharding,
                 host_keys: frozenset[str] = frozenset()) -> dict[str, jax.Array]:
  """Process-local rows -> global arrays sharded over `data` (one process: the whole batch);
  `host_keys` (the batcher's) stay on the host."""
  return {key: jax.make_array_from_process_local_data(batch_sharding, value)
          for key, value in local.items() if key not in host_keys}


def fingerprint(tree: Any) -> str:
  """A SHA-256 of a host tree's structure, shapes, dtypes and bytes."""
  digest = hashlib.sha256(str(jax.tree_util.tree_structure(tree)).encode())
  for leaf in jax.tree_util.tree_leaves(tree):
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{leaf.dtype}{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def load_frozen(recipe, mesh) -> tuple[dict, dict, dict[str, str]]:
  """(frozen arrays on the mesh, their shardings, their fingerprints) of `recipe.frozen`."""
  arrays, shardings, prints = {}, {}, {}
  for name, frozen in recipe.frozen.items():
    shardings[name] = sharding.param_shardings(frozen.abstract, mesh)
    host = frozen.load()
    expected = jax.tree_util.tree_structure(nn.meta.unbox(frozen.abstract))
    if jax.tree_util.tree_structure(host) != expected:
      raise ValueError(f"frozen input {name!r} from {frozen.source} does not have the "
                       "structure its recipe declares")
    prints[name] = fingerprint(host)
    arrays[name] = jax.device_put(host, shardings[name])
    logger.info("frozen input %s from %s (sha256 %s)", name, frozen.source, prints[name][:12])
  return arrays, shardings, prints


def _every(step: int, interval: int) -> bool:
  return interval > 0 and step % interval == 0


class _MetricBuffer:
  """Device metrics of the steps since the last sync; fetched in one transfer."""

  def __init__(self):
    self._pending: list[tuple[int, dict]] = []

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def fetch(self) -> tuple[dict[str, float], int]:
    """(mean of each metric, number of steps), raising NonFiniteLossError on a bad step."""
    pending, self._pending = self._pending, []
    if not pending:
      return {}, 0
    host = jax.device_get([m for _, m in pending])
    for (step, _), values in zip(pending, host):
      if float(values.get("finite", 1.0)) < 1.0 or not np.isfinite(float(values["loss"])):
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in values.items())
        raise NonFiniteLossError(f"non-finite loss or gradient at step {step} ({shown})")
    means = {key: float(np.mean([float(v[key]) for v in host])) for key in host[0]}
    means.pop("finite", None)
    means["lr"] = float(host[-1]["lr"])  # the current rate, not the interval's mean
    return means, len(host)


def _set_up(config, workdir, allow_config_change: bool):
  """(recipe, evaluators, mesh), every key and input checked before anything compiles."""
  recipe_module = recipes.get(config.recipe)
  mesh = sharding.mesh_from_config(config)
  if not recipes.trains(recipe_module):
    raise ValueError(f"recipe={config.recipe!r} has no training steps: run it with "
                     "--mode=eval (or train_and_eval)")
  resumed_at = checkpoint.latest_step(workdir)
  if resumed_at is not None:  # before the recipe mines negatives or loads anything
    changed = run_config.check_resume(workdir, config, resumed_at,
                                      allow_changes=allow_config_change)
    if changed:
      logger.warning("resuming at step %d with changed config keys %s (allowed)",
                     resumed_at, changed)
  recipe = recipe_module.build(config, workdir, mesh)
  set_aside = sharding.refresh_devices_per_process(config)
  if set_aside and not any(getattr(h, "refresh_mesh", None) is not None for h in recipe.hooks):
    raise ValueError(f"mesh.refresh_devices={set_aside}: recipe {recipe.name!r} runs no "
                     "refresh on them (ANCE's negatives do); set it to 0")
  evals = evaluators.build_all(config)
  for evaluator in evals:  # before anything compiles, not after the last step
    missing = [role for role in evaluator.requires if role not in recipe.eval_roles]
    if missing:
      raise ValueError(f"evals.{evaluator.name} needs the model roles {missing}; recipe "
                       f"{recipe.name!r} provides {list(recipe.eval_roles)}")
  selection(config, evals)
  return recipe, evals, mesh


@dataclasses.dataclass(frozen=True)
class Selection:
  """`train.select_best`: which evaluation metric picks the run's model, and its direction."""
  metric: str
  mode: str

  def better(self, value: float, best: float | None) -> bool:
    if best is None:
      return True
    return value > best if self.mode == "max" else value < best


def selection(config: Any, evals: list) -> Selection | None:
  """The run's `Selection`, or None; raises ValueError naming a bad `train.select_*` key."""
  metric = config.train.get("select_best")
  if not metric:
    return None
  mode = str(config.train.get("select_mode", "max"))
  if mode not in ("max", "min"):
    raise ValueError(f"train.select_mode={mode!r} is not 'max' or 'min'")
  names = [evaluator.name for evaluator in evals]
  if "/" not in metric or metric.split("/", 1)[0] not in names:
    raise ValueError(f"train.select_best={metric!r} must be '<evaluator>/<metric>' with an "
                     f"evaluator of config.evals ({names})")
  return Selection(str(metric), mode)


def train(config: Any, workdir: str | os.PathLike, *, final_eval: bool = True,
          allow_config_change: bool = False) -> TrainResult:
  """Trains `config.recipe` in `workdir`, resuming from its latest checkpoint if there is one.

  Args:
    config: The recipe config (see `configs/`).
    workdir: Run directory (local or gs://): config.json, checkpoints/, tensorboard/, eval/,
      export/, model/.
    final_eval: Run `config.evals` after the last step.
    allow_config_change: Resume even when `config` differs from the saved config.json in
      keys that change the training (`run_config.check_resume`).

  Returns:
    A `TrainResult`.

  Raises:
    run_config.InputError: An invalid config, naming the key, or a missing or mismatched
      input (before compiling).
    run_config.ConfigChangedError: Resuming with a changed config, listing the keys.
    NonFiniteLossError: The loss became non-finite; the newest checkpoint is the last good one.
    preemption.Preempted: A SIGTERM stopped the run after a checkpoint of the current step.
  """
  workdir = files.as_path(workdir)
  with run_config.input_errors():
    recipe, evals, mesh = _set_up(config, workdir, allow_config_change)
  train_config = config.train
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=train_config.keep_checkpoints,
                                 save_interval_steps=train_config.checkpoint_every_steps,
                                 async_save=train_config.async_checkpoints)
  writer = None
  try:
    logger.info("recipe %s on mesh %s: %s", recipe.name, dict(mesh.shape), recipe.info)
    writer = metric_writer.MetricWriter(workdir / "tensorboard")
    with preemption.Preemption() as notice:
      return _train_loop(config, workdir, recipe, evals, mesh, ckpt, writer, final_eval,
                         notice)
  finally:
    for hook in recipe.hooks:
      hook.close()
    ckpt.close()  # waits for the last asynchronous save
    if writer is not None:
      writer.close()


def _train_loop(config, workdir, recipe, evals, mesh, ckpt, writer, final_eval,
                notice: preemption.Preemption) -> TrainResult:
  train_config = config.train
  start = ckpt.latest_step()
  host = None
  with run_config.input_errors():
    frozen, frozen_shardings, frozen_prints = load_frozen(recipe, mesh)
  if start is None:
    state, start = recipe.init_state(), 0
    writer.write_hparams(config.to_dict())
  else:
    state, extra = ckpt.restore(start, abstract_state=recipe.abstract_state,
                                shardings=recipe.state_shardings)
    with run_config.input_errors():  # resuming with other data or another frozen input
      recipe.batcher.check_position(extra["data_position"])
      for name, saved in extra.get("frozen_sha256", {}).items():
        if frozen_prints.get(name) != saved:
          source = recipe.frozen[name].source if name in recipe.frozen else "nowhere"
          raise ValueError(f"frozen input {name!r} from {source} is not the one step {start} "
                           f"was trained with (sha256 {saved[:12]}, now "
                           f"{frozen_prints.get(name, 'absent')[:12]})")
    host = ckpt.restore_host(start)
    logger.info("resumed from step %d (%s)", start, extra["data_position"])
  run_config.save_config(workdir, config)  # once the run it describes is known to be valid
  for hook in recipe.hooks:
    hook.start(start, state, host)
  end = recipe.total_steps
  stop = end if train_config.get("stop_at_step") is None else min(end, train_config.stop_at_step)

  # Frozen inputs are the second argument: sharded like params, read-only, never donated.
  step_fn = jax.jit(recipe.train_step,
                    in_shardings=(recipe.state_shardings, frozen_shardings,
                                  recipe.batch_sharding),
                    out_shardings=(recipe.state_shardings, sharding.replicated(mesh)),
                    donate_argnums=0)
  host_keys = frozenset(getattr(recipe.batcher, "host_keys", ()))
  batch_size = int(train_config.batch_size)
  bar = metric_writer.ProgressBar(end, start, enabled=train_config.progress, desc=recipe.name)
  buffer = _MetricBuffer()
  last_means: dict[str, float] = {}
  interval_start = time.perf_counter()
  step = saved_step = start

  def sync(step: int, with_rate: bool = True) -> None:
    """Fetches the pending metrics (stopping on a non-finite one) and writes them."""
    nonlocal last_means, interval_start
    try:
      means, count = buffer.fetch()
    except NonFiniteLossError as error:
      bar.close()
      ckpt.wait()
      good = ckpt.latest_step()
      raise NonFiniteLossError(
          f"{error}. Training stopped; the last good checkpoint is "
          f"{'step ' + str(good) if good is not None else 'none'} in {ckpt.directory}. "
          "Lower optim.lr, raise optim.warmup_steps, or check the data.") from None
    if not count:
      return
    if with_rate:
      elapsed = time.perf_counter() - interval_start
      means.update(steps_per_s=count / elapsed, examples_per_s=count * batch_size / elapsed)
    for hook in recipe.hooks:
      means.update(hook.scalars(step))
    writer.write_scalars(step, {k if "/" in k else f"train/{k}": v for k, v in means.items()})
    bar.update(step, {k: means[k] for k in ("loss", "accuracy", "lr") if k in means})
    last_means = means
    interval_start = time.perf_counter()

  select = selection(config, evals)
  best = ckpt.best_record() if select else None  # a resumed run keeps its best so far

  def evaluate(step: int) -> dict[str, float]:
    nonlocal best
    values = evaluators.run_all(evals, recipe.eval_models(state),
                                workdir / "eval" / f"step_{step}", recipe=recipe.name)
    writer.write_scalars(step, values)
    logger.info("eval at step %d: %s", step, values)
    if select is not None:
      if select.metric not in values:
        raise run_config.InputError(f"train.select_best={select.metric!r} is not a metric "
                                    f"of the evaluation (it gave {sorted(values)})")
      value = float(values[select.metric])
      if select.better(value, None if best is None else best["value"]):
        best = {"metric": select.metric, "value": value, "metrics": values, "step": step}
        ckpt.save_best(step, {"params": state["params"], "step": state["step"]}, best)
        logger.info("best %s=%.4f at step %d", select.metric, value, step)
    return values

  def save(step: int, force: bool = False) -> None:
    extra, host = {"data_position": recipe.batcher.position(step)}, {}
    if frozen_prints:
      extra["frozen_sha256"] = frozen_prints
    for hook in recipe.hooks:
      hook_extra, hook_host = hook.checkpoint_payload()
      extra.update(hook_extra)
      host.update(hook_host)
    ckpt.save(step, state, extra=extra, host=host or None, force=force)

  def stop_on_preemption(step: int, saved: bool) -> None:
    noticed = time.perf_counter()
    sync(step)
    bar.close()
    if not saved:
      save(step, force=True)
    ckpt.wait()  # written and committed before this process may be killed
    seconds = time.perf_counter() - noticed
    logger.warning("preemption notice: saved step %d in %.1f s", step, seconds)
    writer.write_scalars(step, {"train/preemption_save_s": seconds})
    raise preemption.Preempted(step, seconds)

  if start == 0 and train_config.get("eval_at_start") and evals:
    evaluate(0)  # the starting point, a candidate for the best
  for step_index, local_batch in recipe.batcher.iterate(start, stop):
    batch = global_batch(local_batch, recipe.batch_sharding, host_keys)
    if step == start:  # the contract, by tracing once before the first compile
      state_lib.check_step(recipe.name, recipe.train_step, recipe.abstract_state,
                           frozen, batch)
    state, metrics = step_fn(state, frozen, batch)
    step = step_index + 1
    buffer.add(step, metrics)
    for hook in recipe.hooks:
      hook.after_step(step, state)
    save_due = _every(step, train_config.checkpoint_every_steps)
    eval_due = _every(step, train_config.eval_every_steps) and step < end
    if step == start + 1:
      # The first step includes compilation: log it (the initial loss) without a rate.
      jax.block_until_ready(metrics)
      logger.info("first step (with compilation): %.1f s", time.perf_counter() - interval_start)
      sync(step, with_rate=False)
    elif _every(step, train_config.log_every_steps) or save_due or eval_due or step == stop:
      sync(step)
    if save_due:
      save(step)
      saved_step = step
    if step < stop and notice.reached(step):  # before an evaluation that could outlast it
      stop_on_preemption(step, saved=save_due)
    if eval_due:
      evaluate(step)
      interval_start = time.perf_counter()  # keep evaluation out of the training rate
  sync(step)
  bar.close()
  if step > start and step != saved_step:
    save(step, force=True)
  info = dict(recipe.info)
  for hook in recipe.hooks:
    info.update(hook.finish())
  reports = [text for text in (hook.report(info) for hook in recipe.hooks) if text]
  stopped_early = step < end
  eval_metrics = None
  if not stopped_early:
    if final_eval and evals:
      eval_metrics = evaluate(step)
    if select is not None and best is not None:
      if final_eval and evals:
        eval_metrics = dict(best["metrics"])
      info["best"] = {"step": int(best["step"]), select.metric: float(best["value"])}
      if int(best["step"]) != step:  # the selected params are what the run hands on
        state = restore_best(ckpt, recipe, state)
    if train_config.export:  # every process: gathering sharded parameters is a collective
      written = recipe.export(state, str(workdir / "export"))
      if written:
        logger.info("exported %s", [str(p) for p in written])
  return TrainResult(step=step, train_metrics=last_means, eval_metrics=eval_metrics,
                     stopped_early=stopped_early, info=info, reports=reports, state=state,
                     frozen=frozen)


def restore_best(ckpt: checkpoint.Checkpointer, recipe, state: dict) -> dict:
  """`state` with the params (and step) of the best checkpoint, on the state's shardings."""
  wanted = ("params", "step")
  restored, _ = ckpt.restore(checkpoint.BEST,
                             abstract_state={k: recipe.abstract_state[k] for k in wanted},
                             shardings={k: recipe.state_shardings[k] for k in wanted},
                             partial=True)
  return dict(state, **restored)


def run(config: Any, workdir: str | os.PathLike, mode: str = "train_and_eval",
        step: int | str | None = None, *, allow_config_change: bool = False) -> dict[str, Any]:
  """`main.py`'s entry point: train, evaluate a checkpoint, or both.

  An evaluation-only recipe (`zeroshot`) evaluates in `eval` and `train_and_eval` modes, and
  refuses `train`.

  Args:
    config: The recipe config.
    workdir: The run directory.
    mode: `train`, `eval` (the checkpoint at `step`) or `train_and_eval`.
    step: For `eval`: which checkpoint: a step, `best`, or None (the best checkpoint when the
      run selected one, else the latest).
    allow_config_change: See `train`.

  Returns:
    A summary dict: `step`, and `train` / `eval` metrics (`<evaluator>/<metric>`) where they
    ran, `eval_step` (the step the `eval` metrics are of: the best one with
    `train.select_best`), `reports` (the hooks' console tables).

  Raises:
    run_config.InputError: An invalid mode, config or input, naming it.
  """
  if mode not in MODES:
    raise run_config.InputError(f"mode={mode!r} is not one of {MODES}")
  with run_config.input_errors():
    trains = recipes.trains(recipes.get(config.recipe))
  if mode == "eval" or not trains:
    if mode == "train":
      raise run_config.InputError(f"recipe={config.recipe!r} has no training steps: use "
                                  "--mode=eval")
    if not trains:
      run_config.save_config(workdir, config)
    result = recipes.evaluate(config, workdir, step)
    return {"step": result["step"], "eval": result["metrics"]}
  result = train(config, workdir, final_eval=mode == "train_and_eval",
                 allow_config_change=allow_config_change)
  summary = {"step": result.step, "train": result.train_metrics, "info": result.info,
             "stopped_early": result.stopped_early, "reports": result.reports}
  if result.eval_metrics is not None:
    summary["eval"] = result.eval_metrics
    summary["eval_step"] = result.info.get("best", {}).get("step", result.step)
  return summary
