"""The evaluator registry: named entries of `config.evals`, big_vision style.

  config.evals = {
      "dev": {"type": "retrieval", "data": {"name": None, "split": "dev"}, "index": "exact", ...},
  }

Each entry has a `type` from the registry (`retrieval`, `maxsim`, `reqa` (ReQA SQuAD), `sts`
(STS-B Spearman), `lamer` (LameR and HyDE: BM25 and a generator)), its own data (`data.name`
None: the run's `data.name`) and its own settings. An evaluator declares the model roles it
needs (`EvalModels`: `query`, `passage`, `generator`, ...); running it writes `metrics.json` under `<out_root>/<name>/` and its metrics
come back as `<name>/<metric>`. `main.py --mode=eval`, the periodic and final evaluation of
training, and `eval/retrieval.py` all go through here.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable, Mapping, Protocol

from etils import epath

from retrieval_jax import files

logger = logging.getLogger(__name__)

# type -> module under retrieval_jax.evaluators whose `build(name, entry, defaults)` makes one.
_TYPES: dict[str, str] = {"retrieval": "retrieval", "maxsim": "maxsim", "reqa": "reqa",
                          "sts": "sts", "lamer": "lamer"}


class Evaluator(Protocol):
  """One named evaluation: its data and settings are fixed, the models vary."""
  name: str
  requires: tuple[str, ...]   # EvalModels roles it reads

  def run(self, models: Any, out_dir: epath.Path | None) -> dict[str, float]:
    """Metrics without the name prefix; writes metrics.json (and more) into `out_dir`."""


def register(type_name: str, module: str) -> None:
  """Makes `type: type_name` build with `retrieval_jax.evaluators.<module>.build`."""
  _TYPES[type_name] = module


def types() -> list[str]:
  return sorted(_TYPES)


def build(name: str, entry: Any, defaults: Any = None) -> Evaluator:
  """The evaluator of one `config.evals` entry.

  Args:
    name: The entry's name (the metric prefix and the output folder).
    entry: Its config (`type`, `data`, settings).
    defaults: The run's `config.data`, which fills the entry's unset data fields.

  Raises:
    ValueError: Naming `evals.<name>.type` (unknown type) or the entry's bad key.
  """
  type_name = entry.get("type") if hasattr(entry, "get") else None
  if type_name not in _TYPES:
    raise ValueError(f"evals.{name}.type={type_name!r} is not a registered evaluator type; "
                     f"known: {types()}")
  module = importlib.import_module(f"retrieval_jax.evaluators.{_TYPES[type_name]}")
  return module.build(name, entry, defaults)


def build_all(config: Any) -> list[Evaluator]:
  """Every entry of `config.evals`, in order (none: an empty list)."""
  evals = config.get("evals") or {}
  return [build(name, entry, config.get("data")) for name, entry in evals.items()]


def check_models(evaluator: Evaluator, models: Any, recipe: str) -> None:
  """Raises ValueError when `models` lacks a role `evaluator` needs, naming both."""
  missing = [role for role in evaluator.requires if models.get(role) is None]
  if missing:
    raise ValueError(f"evaluator {evaluator.name!r} needs the model roles {missing}; recipe "
                     f"{recipe!r} provides {models.roles()}")


def run_all(evaluators: list[Evaluator], models: Any, out_root: str | os.PathLike | None,
            recipe: str = "?",
            log: Callable[[str, Mapping[str, float]], None] | None = None) -> dict[str, float]:
  """Runs each evaluator into `out_root/<name>/`; returns `<name>/<metric>` keys."""
  results: dict[str, float] = {}
  for evaluator in evaluators:
    check_models(evaluator, models, recipe)
    out_dir = None if out_root is None else files.as_path(out_root) / evaluator.name
    values = evaluator.run(models, out_dir)
    if log is not None:
      log(evaluator.name, values)
    results.update({f"{evaluator.name}/{key}": value for key, value in values.items()})
  return results
