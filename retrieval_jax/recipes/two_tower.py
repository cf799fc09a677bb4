"""Chang et al.'s two-tower models trained with a softmax over the batch: what the pre-training
(`recipes.chang`) and the ReQA fine-tuning (`recipes.reqa`) recipes share.

Both train a `DualEncoder` (a Transformer with the paper's 512-d projection, or the BoW-MLP,
from the model registry) with `dual_encoder.train_step`: every query against every document
of the global batch, scores as inner products (the paper's sampled softmax over the batch,
without the sampling correction: in-batch documents are drawn uniformly, so the correction is
a constant). They differ only in their batches.

`config.init` names a run of either recipe (a workdir, local or gs://) whose latest
checkpoint's parameters start this one: the paper's "pre-train, then fine-tune". Its towers
must have this config's shapes; a shared tower may start two separate ones.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable

import jax
import numpy as np

from retrieval_jax import distributed, files, optim, sharding
from retrieval_jax.models import registry
from retrieval_jax.recipes import base, contrastive, dual_encoder

logger = logging.getLogger(__name__)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def init_params(init: str, dual: dual_encoder.DualEncoder) -> dict:
  """Host params for `dual`'s towers from the latest checkpoint of the run at `init`.

  Raises:
    ValueError: Naming `init`: no run there, or towers of another shape.
  """
  from retrieval_jax import checkpoint, run_config  # pylint: disable=g-import-not-at-top

  workdir = files.as_path(init)
  if not (workdir / "config.json").exists():
    raise ValueError(f"init={init!r}: no training run there (no config.json)")
  source = run_config.load_config(workdir)
  model_files = workdir / contrastive.MODEL_FILES
  source_dual, _ = contrastive.build_model(source, model_files if model_files.exists() else None)
  tx = optim.optimizer_from_config(source.optim, 1 + int(source.optim.get("warmup_steps") or 0))
  abstract = dual_encoder.abstract_state(source_dual, tx)
  mesh = sharding.make_mesh(-1, 1)
  shardings = dual_encoder.state_shardings(source_dual, tx, mesh)
  try:
    with checkpoint.Checkpointer(workdir, async_save=False) as ckpt:
      state, _ = ckpt.restore(abstract_state={"params": abstract["params"]},
                              shardings={"params": shardings["params"]}, partial=True)
  except FileNotFoundError as e:
    raise ValueError(f"init={init!r}: {e}") from None
  restored = jax.tree_util.tree_map(np.asarray, distributed.host_local(state["params"]))
  wanted = _shapes(dual_encoder.abstract_state(dual, tx)["params"])
  params = {}
  for tower in dual.towers:
    params[tower] = restored["shared"] if source_dual.shared else restored[
        "query" if tower == "shared" else tower]
  got = _shapes(params)
  if got != wanted:
    diff = sorted(set(got.items()) ^ set(wanted.items()))[:2]
    raise ValueError(f"init={init!r}: its towers do not have this config's shapes (e.g. "
                     f"{diff}); use the same config.model as the run it comes from")
  if not source_dual.shared and dual.shared:
    logger.info("init=%s: the shared tower starts from its query tower", init)
  return params


def build(config: Any, workdir: str | os.PathLike, mesh: jax.sharding.Mesh, *, name: str,
          make_batcher: Callable[[Any, Any], base.Batcher], steps_of: Callable[[Any], int],
          info: dict | None = None) -> base.Recipe:
  """A two-tower recipe whose batches come from `make_batcher(spec, tokenizer)`.

  Args:
    config: The recipe config.
    workdir: The run directory.
    mesh: The training mesh.
    name: The recipe's name.
    make_batcher: (model spec, tokenizer) -> the batcher.
    steps_of: batcher -> total optimizer steps.
    info: Facts for the log.
  """
  from retrieval_jax.data import tokenize as tok  # pylint: disable=g-import-not-at-top

  workdir = files.as_path(workdir)
  dual, spec = contrastive.build_model(config)
  sharding.validate(config, [spec.encoder])
  if jax.process_index() == 0:
    registry.save_model_files(spec, workdir / contrastive.MODEL_FILES)
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
  batcher = make_batcher(spec, tokenizer)
  steps = steps_of(batcher)
  tx = optim.optimizer_from_config(config.optim, steps)
  schedule = optim.schedule_from_config(config.optim, steps)
  layout = dual_encoder.state_layout(dual, tx, mesh)
  seed = int(config.seed)
  init = config.get("init")
  start = init_params(init, dual) if init else None  # errors before anything compiles

  def init_state():
    if start is None:
      return dual_encoder.init_state(dual, tx, dual_encoder.initial_tower_params(spec, seed),
                                     seed, layout.shardings)
    return dual_encoder.state_lib.init_state(layout.shardings, tx, start,
                                             dual_encoder.rng_stream(seed, "dropout"))

  def eval_models(state):
    return contrastive.towers_as_models(dual, distributed.host_local(state["params"]),
                                        tokenizer, spec, config)

  def export(state, out_dir):
    return dual_encoder.export(dual, state["params"], out_dir, spec.tokenizer_dir,
                               int(config.train.passage_max_length))

  facts = dict(info or {}, steps_per_epoch=batcher.steps_per_epoch, total_steps=steps,
               towers=list(dual.towers), params=base.count_params(layout.abstract["params"]),
               model=str(spec.model_dir or "random"), init=str(init or "random"))
  return base.Recipe(
      name=name, total_steps=steps, batcher=batcher, abstract_state=layout.abstract,
      state_shardings=layout.shardings, batch_sharding=sharding.batch_sharding(mesh),
      init_state=init_state,
      train_step=functools.partial(dual_encoder.train_step, dual=dual, tx=tx, schedule=schedule,
                                   loss_config=config.loss),
      eval_models=eval_models, export=export, info=facts)


def restore_eval_models(config: Any, workdir, step: int | None = None):
  """The trained towers as the `query` and `passage` roles (only params and step restored)."""
  return contrastive.restore_eval_models(config, workdir, step)
