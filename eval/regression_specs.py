"""The pinned regression files, `eval/regressions/<recipe>.yaml`: what each suite runs and the
values its metrics must reproduce.

A file holds one recipe:

  recipe: dpr
  title: DPR (Karpukhin et al. 2020)
  paper: NQ test top-20 accuracy 78.4 ...        # the paper's numbers on the paper's data
  suites:
    smoke:                                       # and/or cpu
      data: synthetic BEIR-shaped set ...        # the data and split the metrics are of
      stages:                                    # run in order, each in its own workdir
        - {name: dpr, config: "configs/dpr.py:smoke"}
        - {name: student, config: "configs/tct_colbert.py:cpu",
           overrides: {teacher.name: "{teacher}"}}   # {stage}: that stage's workdir
      ignore: [train/negatives/*]                # metric globs never compared (timing-bound)
      seeded: false                              # the seed changes nothing (evaluation only)
      seed_key: evals.dev.sampling.seed          # the config key --seeds sets (default: seed)
      paper: {dev/ndcg@10: "64.9 (SciFact test)"}    # optional, per metric
      pinned:                                    # written by `reproduce.py --pin`
        date: ..., machine: ..., commit: ..., seeds: [0, 1, 2], command: ...
        metrics: {train/loss: {value: .., tolerance: .., sd: .., min: .., max: ..}}
  table:                                         # WORKSPACE's reproduction table rows
    - {label: ..., suite: cpu, note: ...}        # measured = the suite's pins (+ note)
    - {label: ..., command: ..., data: ..., measured: ..., paper: ...}

Metrics are named `<metric>` (the recipe's last stage) or `<stage>/<metric>` (earlier stages),
where a training metric is `train/<name>` and an evaluation metric `<evaluator>/<name>`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import pathlib
import statistics
from typing import Any, Mapping, Sequence

from absl import flags
import yaml

REGRESSIONS_DIR = pathlib.Path(__file__).resolve().parent / "regressions"
# The order recipes run and the reproduction table lists them in (others follow by name).
ORDER = ("zeroshot", "bm25", "dpr", "ance", "colbert", "tct_colbert", "contriever", "retromae",
         "chang", "sgopt", "lamer")
SUITES = ("smoke", "cpu")
# Wall-clock measurements: they follow the machine and its load, never the code's results.
TIMING_METRICS = ("*_per_s", "*seconds*", "*/time_*")
# Tolerance: this many standard deviations of the metric over seeds.
SIGMAS = 3.0
# A metric the seeds do not move (an evaluation-only recipe, a schedule's learning rate) still
# differs across CPU kinds by float rounding: this relative allowance, plus `ROUNDING_ABS`
# (float32 noise of a value near zero).
ROUNDING = 1e-4
ROUNDING_ABS = 1e-6


def define_regressions_dir_flag() -> flags.FlagHolder:
  """`--regressions_dir`, once per program (`reproduce.py` and `reproduction_table.py` share it)."""
  if "regressions_dir" in flags.FLAGS:
    return flags.FlagHolder(flags.FLAGS, flags.FLAGS["regressions_dir"])
  return flags.DEFINE_string("regressions_dir", str(REGRESSIONS_DIR),
                             "Where the <recipe>.yaml files are.")


class SpecError(ValueError):
  """A regression file that is malformed; the message names the file and the key."""


def stage_reference(value: Any) -> str | None:
  """The stage an override value `"{stage}"` names (its workdir goes in), else None."""
  if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
    return value[1:-1]
  return None


@dataclasses.dataclass(frozen=True)
class Stage:
  """One `main.py` run of a suite."""
  name: str
  config: str  # configs/<file>.py[:variant]
  overrides: Mapping[str, Any]  # dotted config key -> value; "{stage}" = that stage's workdir
  seed_key: str = "seed"  # the dotted config key a seed sets (its suite's `seed_key`)

  @property
  def config_file(self) -> str:
    return self.config.split(":", 1)[0]

  @property
  def variant(self) -> str:
    return self.config.split(":", 1)[1] if ":" in self.config else ""

  def resolved_overrides(self, workdirs: Mapping[str, str]) -> dict[str, Any]:
    """The overrides with each `"{stage}"` replaced by that stage's workdir."""
    return {key: value if stage_reference(value) is None else workdirs[stage_reference(value)]
            for key, value in self.overrides.items()}


@dataclasses.dataclass(frozen=True)
class Pin:
  """One metric's pinned value."""
  value: float
  tolerance: float
  sd: float | None = None
  min: float | None = None
  max: float | None = None

  def accepts(self, measured: float) -> bool:
    return abs(measured - self.value) <= self.tolerance


@dataclasses.dataclass(frozen=True)
class Suite:
  """A recipe's suite: its stages, data, ignored metrics and pinned values."""
  name: str
  data: str
  stages: tuple[Stage, ...]
  ignore: tuple[str, ...]
  paper: Mapping[str, str]
  pinned: Mapping[str, Any] | None  # date, machine, commit, seeds, command, metrics
  seeded: bool = True  # False: no seed enters the results (evaluation-only recipes)

  @property
  def pins(self) -> dict[str, Pin]:
    if not self.pinned:
      return {}
    return {name: Pin(**fields) for name, fields in self.pinned["metrics"].items()}

  def ignored(self, metric: str) -> bool:
    return any(fnmatch.fnmatchcase(metric, pattern)
               for pattern in TIMING_METRICS + self.ignore)


@dataclasses.dataclass(frozen=True)
class Spec:
  """One recipe's regression file."""
  path: pathlib.Path
  recipe: str
  title: str
  paper: str
  suites: Mapping[str, Suite]
  table: tuple[Mapping[str, Any], ...]
  raw: Mapping[str, Any]


def _require(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
  if not isinstance(mapping, Mapping) or key not in mapping:
    raise SpecError(f"{where}: missing key {key!r}")
  value = mapping[key]
  if not isinstance(value, kind):
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    raise SpecError(f"{where}.{key}: expected {names}, got {value!r}")
  return value


def _stage(raw: Any, where: str) -> Stage:
  name = _require(raw, "name", str, where)
  config = _require(raw, "config", str, where)
  if not config.split(":", 1)[0].endswith(".py"):
    raise SpecError(f"{where}.config: {config!r} is not configs/<file>.py[:variant]")
  overrides = raw.get("overrides") or {}
  if not isinstance(overrides, Mapping):
    raise SpecError(f"{where}.overrides: expected a mapping, got {overrides!r}")
  unknown = set(raw) - {"name", "config", "overrides"}
  if unknown:
    raise SpecError(f"{where}: unknown keys {sorted(unknown)}")
  return Stage(name, config, dict(overrides))


def _pinned(raw: Any, where: str) -> Mapping[str, Any] | None:
  if raw is None:
    return None
  for key in ("date", "machine", "commit", "command"):
    _require(raw, key, str, where)
  _require(raw, "seeds", list, where)
  metrics = _require(raw, "metrics", dict, where)
  for name, fields in metrics.items():
    at = f"{where}.metrics.{name}"
    for key in ("value", "tolerance"):
      _require(fields, key, (int, float), at)
    if fields["tolerance"] < 0:
      raise SpecError(f"{at}.tolerance: must be >= 0, got {fields['tolerance']}")
    unknown = set(fields) - {f.name for f in dataclasses.fields(Pin)}
    if unknown:
      raise SpecError(f"{at}: unknown keys {sorted(unknown)}")
  return raw


def _suite(name: str, raw: Any, where: str) -> Suite:
  data = _require(raw, "data", str, where)
  stages = _require(raw, "stages", list, where)
  if not stages:
    raise SpecError(f"{where}.stages: empty")
  parsed = tuple(_stage(s, f"{where}.stages[{i}]") for i, s in enumerate(stages))
  names = [s.name for s in parsed]
  if len(set(names)) != len(names):
    raise SpecError(f"{where}.stages: repeated stage names {names}")
  for i, stage in enumerate(parsed):
    for key, value in stage.overrides.items():
      if stage_reference(value) is not None:
        if stage_reference(value) not in names[:i]:
          raise SpecError(f"{where}.stages[{i}].overrides.{key}: {value} names no earlier stage "
                          f"(stages: {names})")
  ignore = raw.get("ignore") or []
  paper = raw.get("paper") or {}
  if not isinstance(ignore, list) or not isinstance(paper, Mapping):
    raise SpecError(f"{where}: ignore must be a list and paper a mapping")
  seeded = raw.get("seeded", True)
  if not isinstance(seeded, bool):
    raise SpecError(f"{where}.seeded: expected true or false, got {seeded!r}")
  seed_key = raw.get("seed_key", "seed")
  if not isinstance(seed_key, str) or not seed_key:
    raise SpecError(f"{where}.seed_key: expected a dotted config key, got {seed_key!r}")
  if "seed_key" in raw and not seeded:
    raise SpecError(f"{where}.seed_key: a suite with seeded: false sets no seed")
  parsed = tuple(dataclasses.replace(stage, seed_key=seed_key) for stage in parsed)
  unknown = set(raw) - {"data", "stages", "ignore", "paper", "pinned", "seeded", "seed_key"}
  if unknown:
    raise SpecError(f"{where}: unknown keys {sorted(unknown)}")
  suite = Suite(name, data, parsed, tuple(ignore), dict(paper),
                _pinned(raw.get("pinned"), f"{where}.pinned"), seeded)
  for metric in suite.pins:
    if suite.ignored(metric):
      raise SpecError(f"{where}.pinned.metrics.{metric}: an ignored metric (timing, or "
                      f"matched by {where}.ignore) cannot be pinned")
  return suite


def load(path: str | pathlib.Path) -> Spec:
  """Reads and checks one regression file.

  Raises:
    SpecError: Naming the file and the key that is missing or malformed.
  """
  path = pathlib.Path(path)
  try:
    raw = yaml.safe_load(path.read_text())
  except (OSError, yaml.YAMLError) as error:
    raise SpecError(f"{path}: {error}".replace("\n", " ")) from None
  where = str(path)
  recipe = _require(raw, "recipe", str, where)
  if recipe != path.stem:
    raise SpecError(f"{where}.recipe: {recipe!r} differs from the file name {path.stem!r}")
  suites = _require(raw, "suites", dict, where)
  unknown = set(suites) - set(SUITES)
  if unknown:
    raise SpecError(f"{where}.suites: unknown suites {sorted(unknown)} (known: {SUITES})")
  table = raw.get("table") or []
  for i, row in enumerate(table):
    _require(row, "label", str, f"{where}.table[{i}]")
    if "suite" in row and row["suite"] not in suites:
      raise SpecError(f"{where}.table[{i}].suite: {row['suite']!r} is not one of this file's "
                      f"suites {sorted(suites)}")
  return Spec(path, recipe, _require(raw, "title", str, where), _require(raw, "paper", str, where),
              {name: _suite(name, s, f"{where}.suites.{name}") for name, s in suites.items()},
              tuple(table), raw)


def load_all(directory: str | pathlib.Path = REGRESSIONS_DIR) -> dict[str, Spec]:
  """Every `<recipe>.yaml` in `directory`, by recipe, in `ORDER` (then by name)."""
  paths = sorted(pathlib.Path(directory).glob("*.yaml"),
                 key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
  if not paths:
    raise SpecError(f"{directory}: no <recipe>.yaml files")
  return {spec.recipe: spec for spec in map(load, paths)}


def metric_name(stage: str, metric: str, last: bool) -> str:
  """A suite's name for `metric` of `stage`: bare for the last stage, `<stage>/...` before."""
  return metric if last else f"{stage}/{metric}"


def tolerance(values: Sequence[float], value: float) -> float:
  """The tolerance of a metric measured over seeds: `SIGMAS` standard deviations, and at least
  the rounding allowance `ROUNDING * |value| + ROUNDING_ABS` (all that is left when seeds
  agree)."""
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return max(SIGMAS * spread, ROUNDING * abs(value) + ROUNDING_ABS)


def pins_from_seeds(by_seed: Mapping[int, Mapping[str, float]], own_seed: int,
                    seeded: bool = True) -> dict:
  """`pinned.metrics` from each seed's metrics: the value of the config's own seed (what the
  command reproduces) and the spread over all seeds.

  Args:
    by_seed: seed -> metric -> value.
    own_seed: The configs' own seed.
    seeded: False for a suite no seed enters: one run, the rounding allowance as tolerance.

  Raises:
    ValueError: When fewer than three seeds ran, or the config's own seed is not among them.
  """
  if not seeded:
    by_seed = {own_seed: by_seed[own_seed]}
  elif len(by_seed) < 3 or own_seed not in by_seed:
    raise ValueError(f"pinning needs at least 3 seeds including the config's own ({own_seed}); "
                     f"got {sorted(by_seed)}")
  metrics = {}
  for name, value in sorted(by_seed[own_seed].items()):
    values = [float(m[name]) for m in by_seed.values() if name in m]
    if not all(math.isfinite(v) for v in values) or len(values) < len(by_seed):
      continue  # a metric some seeds lack or cannot pin
    metrics[name] = {"value": _round(value), "tolerance": _round(tolerance(values, value))}
    if seeded:
      metrics[name].update(sd=_round(statistics.stdev(values)), min=_round(min(values)),
                           max=_round(max(values)))
  return metrics


def _round(x: float) -> float:
  return float(f"{float(x):.6g}")


def write_pinned(spec: Spec, suite: str, pinned: Mapping[str, Any]) -> None:
  """Rewrites `spec.path` with `suites.<suite>.pinned` replaced (key order kept)."""
  raw = yaml.safe_load(spec.path.read_text())
  raw["suites"][suite]["pinned"] = dict(pinned)
  spec.path.write_text(dump(raw))


def dump(raw: Mapping[str, Any]) -> str:
  """YAML text of a regression file: keys in their order, long strings unwrapped."""
  return yaml.safe_dump(raw, sort_keys=False, width=1000, allow_unicode=True)
