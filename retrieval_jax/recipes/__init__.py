"""One module per paper recipe; `get(name)` returns the module that builds it.

A trained recipe module provides `build(config, workdir, mesh) -> base.Recipe` and
`restore_eval_models(config, workdir, step) -> (base.EvalModels, step)`. An evaluation-only
recipe (no training steps: `zeroshot`, `lamer`) sets `TRAINS = False` and
provides `eval_models(config) -> base.EvalModels`. See `recipes/base.py`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# recipe name (config.recipe) -> module (under retrieval_jax.recipes, or a full dotted path)
AVAILABLE = {"dpr": "dpr", "ance": "ance", "zeroshot": "zeroshot", "colbert": "colbert",
             "tct_colbert": "tct_colbert", "contriever": "contriever", "retromae": "retromae",
             "chang": "chang", "reqa": "reqa", "sgopt": "sgopt", "lamer": "lamer"}


def register(name: str, module: str) -> None:
  """Makes `config.recipe=name` build with `module` (a dotted path; tests, extensions)."""
  AVAILABLE[name] = module


def get(name: str):
  """The recipe module for `config.recipe`.

  Raises:
    ValueError: Naming `recipe` and the available recipes.
  """
  if name not in AVAILABLE:
    raise ValueError(f"recipe={name!r} is not a recipe in this version; available: "
                     f"{sorted(AVAILABLE)}")
  module = AVAILABLE[name]
  return importlib.import_module(module if "." in module else f"retrieval_jax.recipes.{module}")


def trains(module) -> bool:
  """Whether the recipe has training steps (False: evaluation only)."""
  return getattr(module, "TRAINS", True)


def eval_models(config: Any, workdir: str | os.PathLike, step: int | str | None = None):
  """(EvalModels, step or None): a trained recipe's checkpoint at `step`, or an
  evaluation-only recipe's models.

  `step`: a number, `best` (the run's best checkpoint, `train.select_best`), or None: the best
  checkpoint when the run kept one, else the latest.
  """
  from retrieval_jax import checkpoint  # pylint: disable=g-import-not-at-top

  module = get(config.recipe)
  if not trains(module):
    return module.eval_models(config), None
  if step is None and checkpoint.has_best(workdir):
    step = checkpoint.BEST
  return module.restore_eval_models(config, workdir, step)


def evaluate(config: Any, workdir: str | os.PathLike, step: int | str | None = None, *,
             evals: Any = None, out_root: str | os.PathLike | None = None) -> dict:
  """Runs `config.evals` (or `evals`) on a checkpoint or an evaluation-only recipe's models.

  Args:
    config: The run's config (e.g. `checkpoint.load_config(workdir)`).
    workdir: The run directory (holding `checkpoints/` for a trained recipe).
    step: The checkpoint step, or `best`; None: the best checkpoint if the run kept one,
      else the latest.
    evals: A `config.evals`-shaped mapping that replaces the config's.
    out_root: Where each evaluator's folder goes; default `workdir/eval/step_<N>` (trained)
      or `workdir/eval` (evaluation only).

  Returns:
    {"step": N or None, "metrics": {"<name>/<metric>": ...}, "out_root": path}.
  """
  from retrieval_jax import evaluators, run_config  # pylint: disable=g-import-not-at-top

  if evals is not None:
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.evals = evals
  with run_config.input_errors():  # a bad key, a missing checkpoint, model or data set
    built = evaluators.build_all(config)
    models, step = eval_models(config, workdir, step)
  if out_root is None:
    out_root = os.path.join(os.fspath(workdir), "eval",
                            *([] if step is None else [f"step_{step}"]))
  metrics = evaluators.run_all(built, models, out_root, recipe=config.recipe)
  return {"step": step, "metrics": metrics, "out_root": str(out_root)}
