"""One module per paper recipe; `get(name)` returns the module that builds it.

A recipe module provides `build(config, workdir, mesh) -> base.Recipe` and
`restore_encoders(config, workdir, step)` for evaluating its checkpoints.
"""

import importlib

# recipe name (config.recipe) -> module under retrieval_jax.recipes
AVAILABLE = {"dpr": "dpr", "ance": "ance"}


def get(name: str):
  """The recipe module for `config.recipe`.

  Raises:
    ValueError: Naming `recipe` and the available recipes.
  """
  if name not in AVAILABLE:
    raise ValueError(f"recipe={name!r} has no training recipe in this version; available: "
                     f"{sorted(AVAILABLE)}")
  return importlib.import_module(f"retrieval_jax.recipes.{AVAILABLE[name]}")


def evaluate_checkpoint(config, workdir, step=None, *, eval_config=None, data_config=None,
                        out_dir=None) -> dict:
  """Evaluates a training checkpoint of `workdir` on the eval split.

  Args:
    config: The run's config (e.g. `checkpoint.load_config(workdir)`).
    workdir: The run directory holding `checkpoints/`.
    step: The checkpoint step; None: the latest.
    eval_config: An `eval` section overriding `config.eval` (index, depth, lengths, ...).
    data_config: A `data` section overriding `config.data` (name, eval_split, ...).
    out_dir: Where metrics.json and run.trec go; default `workdir/eval/step_<N>`.

  Returns:
    {"step": N, "metrics": {...}, "out_dir": path}.
  """
  import os  # pylint: disable=g-import-not-at-top

  from retrieval_jax import evaluation  # pylint: disable=g-import-not-at-top

  module = get(config.recipe)
  query_encoder, passage_encoder, step = module.restore_encoders(config, workdir, step)
  data_config = data_config or config.data
  data = module.load_split(data_config, data_config.eval_split)
  out_dir = out_dir or os.path.join(os.fspath(workdir), "eval", f"step_{step}")
  result = evaluation.evaluate_retrieval(
      data, evaluation.settings_from_config(eval_config or config.eval), passage_encoder,
      out_dir, query_encoder=query_encoder)
  return {"step": step, "metrics": {**result.metrics, **result.extra}, "out_dir": str(out_dir)}
