r"""Every recipe's numbers regenerated and checked against the pinned values.

  python eval/reproduce.py --suite=smoke --out=/tmp/repro          # seconds a recipe
  python eval/reproduce.py --suite=cpu --out=runs/repro            # hours: the laptop-scale runs
  python eval/reproduce.py --suite=cpu --recipes=dpr,ance --out=runs/repro
  python eval/reproduce.py --suite=smoke --seeds=0,1,2,3,4 --pin --out=/tmp/pin

For each recipe (`eval/regressions/<recipe>.yaml`) the suite's stages run in order, each a
`main.py` training (then its evaluators) in its own workdir under `OUT/runs/` (in a process
of its own for the cpu suite: `--stage_processes`); every metric is
compared with its pinned value and tolerance. `OUT/report.md` has a table per recipe (metric,
measured, its range over the seeds run, pinned, tolerance, the paper's number on the paper's
data) and `OUT/report.json` everything. The exit status is 1 when a metric is outside its
tolerance, missing, or a recipe failed to run.

Rerunning with the same `--out` resumes: a finished stage (`<workdir>/reproduce.json`) is not
run again, an interrupted one resumes from its checkpoint (a SIGTERM to this program reaches
the stage's process, which saves one, and stops the suite); after a config file changes, use a
new `--out` (a workdir refuses to resume with another config, naming the keys). Stages with
the same config share one workdir (TCT-ColBERT's teacher is the ColBERT recipe's run).

`--seeds` runs each stage once per seed (`--config.seed`, or the suite's `seed_key`); with
`--pin` the suite's pinned values become the config's own seed's measurements, each with the
tolerance `SIGMAS` standard deviations over the seeds (`eval/regression_specs.py`).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import math
import pathlib
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Mapping, Sequence

from absl import app, flags, logging

from retrieval_jax import host_malloc

if __package__:
  from . import bench_harness, regression_specs  # pylint: disable=g-import-not-at-top
else:  # Run as a script: eval/ is first on sys.path.
  import bench_harness  # pylint: disable=g-import-not-at-top
  import regression_specs  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
MARKER = "reproduce.json"
ATTEMPTS = "reproduce.attempts.json"  # the wall time of each attempt at an unfinished stage
# A shell's status for a SIGTERM, training's `preemption.EXIT_CODE` (not imported: it needs JAX).
SIGTERM_EXIT = 128 + int(signal.SIGTERM)

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, defined only when this file runs as a program: tests import it
  beside other eval/ modules, whose `--out` would collide."""
  flags.DEFINE_list("recipes", [], "Recipes to run (default: every file in --regressions_dir).")
  flags.DEFINE_enum("suite", "smoke", list(regression_specs.SUITES), "Which suite.")
  flags.DEFINE_string("out", None, "Directory for the runs, report.md and report.json.")
  flags.DEFINE_list("seeds", [], "Run every stage with each of these seeds too (default: the "
                    "configs' own seed only).")
  flags.DEFINE_bool("pin", False, "Write the measured values and their spread over --seeds (at "
                    "least 3) into the regression files.")
  regression_specs.define_regressions_dir_flag()
  flags.DEFINE_enum(
      "stage_processes", "auto", ["auto", "true", "false"],
      "Run each stage in a process of its own (its memory returns to the system when it ends): "
      "auto = for the cpu suite; the smoke suite's stages share this process.")
  flags.DEFINE_string("run_stage", None, "Internal: run the one stage <recipe>/<stage> of "
                      "--suite here (a stage's own process).")
  flags.DEFINE_integer("stage_seed", None, "Internal: --run_stage's seed.")


host_malloc.define_flag()


def load_config(stage: regression_specs.Stage, workdirs: Mapping[str, str], seed: int | None):
  """The stage's config: `get_config(variant)` of its file, overrides and seed (at the stage's
  `seed_key`) applied.

  Raises:
    regression_specs.SpecError: An unknown config file, variant or key.
  """
  path = REPO / stage.config_file
  if not path.is_file():
    raise regression_specs.SpecError(f"stage {stage.name}: no config file {path}")
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # configs import each other as `configs.<name>`
  module_spec = importlib.util.spec_from_file_location(f"configs.{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(stage.variant)
  except ValueError as error:
    raise regression_specs.SpecError(f"stage {stage.name}: {error}") from None
  settings = stage.resolved_overrides(workdirs)
  if seed is not None:
    settings[stage.seed_key] = seed
  for key, value in settings.items():
    *parents, leaf = key.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, TypeError) as error:
      raise regression_specs.SpecError(
          f"stage {stage.name}: cannot set config.{key}={value!r}: {error}") from None
  return config


def own_seed(stage: regression_specs.Stage) -> int:
  """The seed the stage's config sets at its `seed_key` (its `{stage}` references need no
  workdir for that)."""
  node = load_config(stage, _Placeholders(), None)
  for part in stage.seed_key.split("."):
    node = node[part]
  return int(node)


class _Placeholders(dict):
  """Any stage's workdir, as a placeholder."""

  def __missing__(self, key):
    return f"<{key}>"


def stage_workdir(out: pathlib.Path, stage: regression_specs.Stage,
                  seed: int | None) -> pathlib.Path:
  """`OUT/runs/<config>_<variant>[_<overrides hash>][_seed<N>]`: equal configs share a run."""
  name = f"{pathlib.Path(stage.config_file).stem}_{stage.variant or 'default'}"
  if stage.overrides:
    text = json.dumps(stage.overrides, sort_keys=True)
    name += "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
  if seed is not None:
    name += f"_seed{seed}"
  return out / "runs" / name


def command(stage: regression_specs.Stage, workdir: pathlib.Path, workdirs: Mapping[str, str],
            seed: int | None) -> str:
  """The `main.py` command line equivalent to running the stage."""
  parts = ["python main.py", f"--config={stage.config}"]
  for key, value in stage.resolved_overrides(workdirs).items():
    parts.append(f"--config.{key}={value}")
  if seed is not None:
    parts.append(f"--config.{stage.seed_key}={seed}")
  parts.append(f"--workdir={workdir}")
  return " ".join(parts)


def numeric_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
  """`train/<name>` from the last training log and `<evaluator>/<name>` from the evaluation,
  numbers only."""
  metrics = {}
  for prefix, values in (("train/", summary.get("train") or {}), ("", summary.get("eval") or {})):
    for name, value in values.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        metrics[prefix + name] = float(value)
  return metrics


class AttemptClock:
  """Wall time of a stage over its attempts: an interrupted run (a session's end, a crash)
  resumes from its checkpoint, and its time so far stays counted. The current attempt's
  elapsed seconds are written to `path` every `every` seconds and when it ends."""

  def __init__(self, path: pathlib.Path, every: float = 30.0):
    self.path, self.every = path, every
    self.attempts = json.loads(path.read_text()) if path.exists() else []
    self._stop = threading.Event()

  @property
  def total(self) -> float:
    return float(sum(self.attempts))

  def _save(self) -> None:
    self.attempts[-1] = round(time.perf_counter() - self._start, 1)
    self.path.write_text(json.dumps(self.attempts))

  def _tick(self) -> None:
    while not self._stop.wait(self.every):
      self._save()

  def __enter__(self):
    self._start = time.perf_counter()
    self.attempts.append(0.0)
    self._thread = threading.Thread(target=self._tick, name="reproduce_clock", daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self._save()
    return False


def finished(config, workdir: pathlib.Path) -> dict[str, Any] | None:
  """The marker of a stage that finished in `workdir` with this very config, else None."""
  from retrieval_jax import run_config  # pylint: disable=g-import-not-at-top

  marker = workdir / MARKER
  if not marker.exists():
    return None
  done = json.loads(marker.read_text())
  return done if done.get("config") == run_config.as_json(config) else None


def run_stage(config, workdir: pathlib.Path, text: str) -> dict[str, Any]:
  """Runs (or resumes) one stage, or reads its marker when it finished before with this config."""
  from retrieval_jax import run_config, train  # pylint: disable=g-import-not-at-top

  done = finished(config, workdir)
  if done is not None:
    return {**done, "reused": True}
  config_json = run_config.as_json(config)
  with AttemptClock(workdir / ATTEMPTS) as clock:
    summary = train.run(config, workdir, "train_and_eval")
  done = {"command": text, "seconds": round(clock.total, 1), "attempts": len(clock.attempts),
          "step": summary.get("step"), "eval_step": summary.get("eval_step"),
          "metrics": numeric_metrics(summary), "config": config_json,
          "finished": datetime.datetime.now().isoformat(timespec="seconds")}
  (workdir / MARKER).write_text(json.dumps(done, indent=1))
  return {**done, "reused": False}


def stage_plan(suite: regression_specs.Suite, out: pathlib.Path, seed: int | None):
  """(stage, workdir, config, command) of each stage, in order."""
  workdirs, plan = {}, []
  for stage in suite.stages:
    workdir = stage_workdir(out, stage, seed)
    config = load_config(stage, workdirs, seed)
    plan.append((stage, workdir, config, command(stage, workdir, workdirs, seed)))
    workdirs[stage.name] = str(workdir)
  return plan


def preempted(error: BaseException) -> bool:
  """Whether `error` is training's `preemption.Preempted`; looked up, not imported, so this
  process stays free of JAX while stages run in processes of their own."""
  module = sys.modules.get("retrieval_jax.preemption")
  return module is not None and isinstance(error, module.Preempted)


def run_passing_sigterm(args: Sequence[str]) -> int:
  """Runs `args` and returns its exit status; a SIGTERM to this process goes to the child too
  (a preempted or `timeout`-ed run saves the stage's checkpoint instead of orphaning it), then
  this process exits with the child's status.
  """
  child = subprocess.Popen(args)
  terminated = []

  def pass_on(signum, unused_frame):
    terminated.append(signum)
    child.send_signal(signum)

  previous = signal.signal(signal.SIGTERM, pass_on)
  try:
    status = child.wait()
  finally:
    signal.signal(signal.SIGTERM, previous)
  if terminated:
    # SystemExit, not an error: the recipe loop must stop here, not go on to the next recipe.
    # The child's status when it saved and exited, else the shell's code for a SIGTERM.
    raise SystemExit(status if status > 0 else SIGTERM_EXIT)
  return status


def run_stage_process(spec: regression_specs.Spec, stage: str, suite: str, out: pathlib.Path,
                      seed: int | None) -> None:
  """Runs one stage in a new process of this program (`--run_stage`), which writes its marker.

  Raises:
    RuntimeError: When the process fails, with its exit status.
  """
  args = [sys.executable, str(pathlib.Path(__file__).resolve()),
          f"--run_stage={spec.recipe}/{stage}", f"--suite={suite}", f"--out={out}",
          f"--regressions_dir={spec.path.parent}", f"--malloc={FLAGS.malloc}"]
  if seed is not None:
    args.append(f"--stage_seed={seed}")
  status = run_passing_sigterm(args)
  if status:
    raise RuntimeError(f"stage {stage} exited with status {status} (its output is above; "
                       "rerun to resume it)")


def run_recipe(spec: regression_specs.Spec, suite: regression_specs.Suite, out: pathlib.Path,
               seed: int | None, counted: set[str], processes: bool = False) -> dict[str, Any]:
  """Runs a recipe's stages for one seed (None: the configs' own), each in a process of its own
  with `processes`: its metrics, commands and wall time (each stage's over all its attempts,
  in this invocation or an earlier one with this `out`; a stage in `counted`, which another
  recipe shares, costs nothing again)."""
  commands, metrics, seconds = [], {}, 0.0
  plan = stage_plan(suite, out, seed)
  for i, (stage, workdir, config, text) in enumerate(plan):
    workdir.mkdir(parents=True, exist_ok=True)
    commands.append(text)
    if processes and finished(config, workdir) is None:
      run_stage_process(spec, stage.name, suite.name, out, seed)
      if finished(config, workdir) is None:
        raise RuntimeError(f"stage {stage.name}'s process left no {workdir / MARKER}")
    done = run_stage(config, workdir, text)
    if str(workdir) not in counted:
      seconds += done["seconds"]
      counted.add(str(workdir))
    last = i == len(suite.stages) - 1
    for name, value in done["metrics"].items():
      full = regression_specs.metric_name(stage.name, name, last)
      if not suite.ignored(full):
        metrics[full] = value
  return {"commands": commands, "metrics": metrics, "seconds": round(seconds, 1)}


def compare(suite: regression_specs.Suite, measured: Mapping[str, float]) -> list[dict[str, Any]]:
  """One row per metric, pinned or measured: measured, pinned, tolerance, status (`ok`,
  `outside tolerance`, `missing`, `not pinned`) and the paper's number when the file gives one."""
  pins, rows = suite.pins, []
  for name in sorted(set(pins) | set(measured), key=_metric_order):
    pin, value = pins.get(name), measured.get(name)
    if pin is None:
      status = "not pinned"
    elif value is None:
      status = "missing"
    elif not math.isfinite(value) or not pin.accepts(value):
      status = "outside tolerance"
    else:
      status = "ok"
    rows.append({"metric": name, "measured": value,
                 "pinned": None if pin is None else pin.value,
                 "tolerance": None if pin is None else pin.tolerance, "status": status,
                 "paper": suite.paper.get(name)})
  return rows


def _metric_order(name: str) -> tuple[int, str]:
  return ("train/" in name, name)  # evaluations first


FAILING = ("outside tolerance", "missing")


def recipe_status(rows: Sequence[Mapping[str, Any]], pinned: bool) -> str:
  if any(r["status"] in FAILING for r in rows):
    return "regressed"
  return "ok" if pinned else "not pinned"


def _format(x: Any) -> str:
  if x is None:
    return "—"
  if isinstance(x, float):
    return f"{x:.6g}"
  return str(x)


def duration(seconds: float) -> str:
  minutes, secs = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f"{hours} h {minutes} min"
  return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def summary(report: Mapping[str, Any]) -> str:
  """`all ok`, or which recipes failed, which have no pins and which have not run yet."""
  parts = [f"{label}: {', '.join(report[key])}"
           for key, label in (("failed", "failed"), ("not_pinned", "not pinned"),
                              ("pending", "not run yet")) if report.get(key)]
  return "; ".join(parts) or "all ok"


def wall_time(result: Mapping[str, Any]) -> str:
  """A recipe's wall time, and each seed's when it ran several."""
  text = duration(result.get("seconds", 0.0))
  by_seed = result.get("seconds_by_seed", {})
  if len(by_seed) > 1:
    text += " (" + "; ".join(f"seed {s}: {duration(t)}" for s, t in by_seed.items()) + ")"
  return text


def seed_range(result: Mapping[str, Any], metric: str) -> str:
  """`min–max` of `metric` over the seeds a recipe ran, `—` where fewer than two have it."""
  values = [m[metric] for m in result.get("by_seed", {}).values()
            if isinstance(m.get(metric), (int, float))]
  return f"{_format(min(values))}–{_format(max(values))}" if len(values) > 1 else "—"


def report_markdown(report: Mapping[str, Any]) -> str:
  """`report.md`: the summary, then a table per recipe."""
  machine = report["environment"]["cpu"]
  total = sum(r.get("seconds", 0.0) for r in report["recipes"].values())
  lines = [f"# Reproduction report: the `{report['suite']}` suite", "",
           f"{report['started']} on {machine['model']} ({machine['usable_cpus']} usable CPUs), "
           f"commit {report['commit']}. The recipes' wall time: {duration(total)} over every "
           f"attempt ({duration(report['seconds'])} in this invocation). "
           f"Exit status {report['exit_status']}: {summary(report)}.", "",
           "| recipe | status | outside tolerance or missing | wall time |", "|---|---|---|---|"]
  for name, result in report["recipes"].items():
    bad = ", ".join(r["metric"] for r in result.get("rows", []) if r["status"] in FAILING)
    if result["status"] == "error":
      bad = result["error"]
    lines.append(f"| {name} | {result['status']} | {bad or '—'} | {wall_time(result)} |")
  for name, result in report["recipes"].items():
    lines += ["", f"## {name}: {result['title']}", "", f"Data: {result['data']}.", "",
              f"The paper: {result['paper']}.", ""]
    if result.get("pinned"):
      p = result["pinned"]
      seeds = (f"over seeds {', '.join(map(str, p['seeds']))}" if p["seeds"]
               else "from one run (no seed enters)")
      lines += [f"Pinned on {p['date']}, {p['machine']}, commit {p['commit']}, {seeds}.", ""]
    lines += ["```"] + result.get("commands", []) + ["```", ""]
    if result["status"] == "error":
      lines += [f"**Failed to run:** {result['error']}"]
      continue
    seeds = list(result.get("by_seed", {}))
    several = len(seeds) > 1
    seed_column = f" seeds {', '.join(seeds)} (min–max) |" if several else ""
    lines += [f"| metric | measured |{seed_column} pinned | tolerance | status | paper |",
              "|---|---|" + ("---|" if several else "") + "---|---|---|---|"]
    for r in result["rows"]:
      status = f"**{r['status']}**" if r["status"] in FAILING else r["status"]
      seed_cell = f" {seed_range(result, r['metric'])} |" if several else ""
      lines.append(f"| {r['metric']} | {_format(r['measured'])} |{seed_cell} "
                   f"{_format(r['pinned'])} | ± {_format(r['tolerance'])} | {status} | "
                   f"{r['paper'] or '—'} |".replace("± —", "—"))
  return "\n".join(lines) + "\n"


def git_commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                          capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def reproduce(specs: Mapping[str, regression_specs.Spec], suite: str, out: pathlib.Path,
              seeds: Sequence[int] = (), pin: bool = False, echo=print,
              processes: bool = False) -> dict[str, Any]:
  """Runs `suite` of every spec (each stage in a process of its own with `processes`),
  compares, writes `OUT/report.{md,json}` after every recipe (and the pins with `pin`); returns
  the report, whose `exit_status` is 1 on any regression or failed recipe."""
  out.mkdir(parents=True, exist_ok=True)
  started, start = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
  report = {"suite": suite, "out": str(out), "started": started, "commit": git_commit(),
            "environment": bench_harness.environment(), "seeds": list(seeds), "recipes": {}}
  chosen = [(n, s) for n, s in specs.items() if suite in s.suites]
  counted = set()  # stage workdirs whose time a recipe of this report already counts
  for index, (name, spec) in enumerate(chosen, 1):
    suite_spec = spec.suites[suite]
    result = {"title": spec.title, "paper": spec.paper, "data": suite_spec.data,
              "pinned": {k: v for k, v in (suite_spec.pinned or {}).items() if k != "metrics"}}
    report["recipes"][name] = result
    recipe_start = time.perf_counter()
    try:
      seed0 = own_seed(suite_spec.stages[-1])
      runs = {seed0: run_recipe(spec, suite_spec, out, None, counted, processes)}
      for seed in seeds if suite_spec.seeded else ():
        if seed != seed0:
          runs[seed] = run_recipe(spec, suite_spec, out, seed, counted, processes)
    except BaseException as error:  # pylint: disable=broad-except
      if preempted(error) or not isinstance(error, Exception):
        # A SIGTERM (checkpoint saved) or Ctrl-C stops the suite; the report lists this
        # recipe and the rest as not run yet.
        del report["recipes"][name]
        write_report(report, out, pin, start, pending=[n for n, _ in chosen[index - 1:]])
        raise
      # One recipe's failure must not cost the others' hours: report it and go on.
      logging.error("%s failed:\n%s", name, traceback.format_exc())
      result.update(status="error", error=f"{type(error).__name__}: {error}".splitlines()[0],
                    seconds=round(time.perf_counter() - recipe_start, 1))
      write_report(report, out, pin, start, pending=[n for n, _ in chosen[index:]])
      echo(f"[{index}/{len(chosen)}] {name}: error: {result['error']} "
           f"({duration(result['seconds'])})")
      continue
    own = runs[seed0]
    result.update(commands=own["commands"], seconds=sum(r["seconds"] for r in runs.values()),
                  seconds_by_seed={str(s): r["seconds"] for s, r in runs.items()},
                  measured=own["metrics"],
                  by_seed={str(s): r["metrics"] for s, r in runs.items()})
    if pin:
      pinned = {"date": datetime.date.today().isoformat(),
                "machine": f"{report['environment']['cpu']['model']}, "
                           f"{report['environment']['cpu']['usable_cpus']} CPUs",
                "commit": report["commit"], "seeds": sorted(runs) if suite_spec.seeded else [],
                "command": " && ".join(own["commands"]).replace(str(out), "OUT"),
                "metrics": regression_specs.pins_from_seeds(
                    {s: r["metrics"] for s, r in runs.items()}, seed0, suite_spec.seeded)}
      regression_specs.write_pinned(spec, suite, pinned)
      suite_spec = regression_specs.load(spec.path).suites[suite]
      result["pinned"] = {k: v for k, v in pinned.items() if k != "metrics"}
    rows = compare(suite_spec, own["metrics"])
    result.update(rows=rows, status=recipe_status(rows, bool(suite_spec.pinned)))
    bad = [r for r in rows if r["status"] in FAILING]
    detail = "; ".join(f"{r['metric']} {_format(r['measured'])} (pinned {_format(r['pinned'])} "
                       f"± {_format(r['tolerance'])})" for r in bad)
    if bad:
      detail = f": {detail}"
    elif suite_spec.pinned:
      detail = f", {sum(r['status'] == 'ok' for r in rows)} metrics within tolerance"
    else:
      detail = f", {len(rows)} metrics measured"
    write_report(report, out, pin, start, pending=[n for n, _ in chosen[index:]])
    echo(f"[{index}/{len(chosen)}] {name}: {result['status']}{detail} "
         f"({duration(result['seconds'])})")
  write_report(report, out, pin, start, pending=[])
  return report


def write_report(report: dict[str, Any], out: pathlib.Path, pin: bool, start: float,
                 pending: Sequence[str]) -> None:
  """Completes `report` with the recipes done so far and writes `OUT/report.{md,json}`; called
  after every recipe, so a suite cut short (hours in) keeps the report of what it ran."""
  report["seconds"] = round(time.perf_counter() - start, 1)
  statuses = {n: r["status"] for n, r in report["recipes"].items()}
  report["failed"] = [n for n, status in statuses.items() if status in ("regressed", "error")]
  report["not_pinned"] = [n for n, status in statuses.items() if status == "not pinned"]
  report["pending"] = list(pending)
  report["exit_status"] = int(bool(report["failed"] or report["pending"]
                                   or (report["not_pinned"] and not pin)))
  (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
  (out / "report.md").write_text(report_markdown(report))


def stage_main(specs: Mapping[str, regression_specs.Spec], which: str, suite: str,
               out: pathlib.Path, seed: int | None) -> int:
  """`--run_stage=<recipe>/<stage>`: runs that stage here; its exit status."""
  recipe, _, name = which.partition("/")
  if recipe not in specs or suite not in specs[recipe].suites:
    print(f"error: --run_stage={which}: no {suite} suite of {recipe!r}", file=sys.stderr)
    return 1
  for stage, workdir, config, text in stage_plan(specs[recipe].suites[suite], out, seed):
    if stage.name == name:
      from retrieval_jax import preemption, run_config  # pylint: disable=g-import-not-at-top

      workdir.mkdir(parents=True, exist_ok=True)
      try:
        run_stage(config, workdir, text)
      except run_config.InputError as error:  # a bad key or input: one line, as main.py
        print(f"error: {error}", file=sys.stderr)
        return 1
      except preemption.Preempted as stopped:  # checkpoint saved: the rerun resumes
        print(f"\n{stopped}", flush=True)
        return preemption.EXIT_CODE
      return 0
  print(f"error: --run_stage={which}: {recipe} has no stage {name!r}", file=sys.stderr)
  return 1


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  host_malloc.ensure_or_exit(FLAGS.malloc, may_reexec=__name__ == "__main__")
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    raise app.UsageError(f"--seeds={','.join(FLAGS.seeds)}: not integers") from None
  if FLAGS.pin and len(set(seeds)) < 3:
    raise app.UsageError("--pin needs --seeds with at least 3 seeds (the tolerance is their "
                         "spread)")
  try:
    specs = regression_specs.load_all(FLAGS.regressions_dir)
  except regression_specs.SpecError as error:
    sys.exit(f"error: {error}")
  unknown = [r for r in FLAGS.recipes if r not in specs]
  if unknown:
    sys.exit(f"error: --recipes: unknown {unknown}; known: {', '.join(specs)}")
  if FLAGS.recipes:
    specs = {r: specs[r] for r in FLAGS.recipes}
  if FLAGS.run_stage:
    sys.exit(stage_main(specs, FLAGS.run_stage, FLAGS.suite, pathlib.Path(FLAGS.out),
                        FLAGS.stage_seed))
  if not any(FLAGS.suite in s.suites for s in specs.values()):
    sys.exit(f"error: no recipe among {', '.join(specs)} has a {FLAGS.suite} suite")
  processes = {"true": True, "false": False}.get(FLAGS.stage_processes, FLAGS.suite == "cpu")
  try:
    report = reproduce(specs, FLAGS.suite, pathlib.Path(FLAGS.out), seeds, FLAGS.pin,
                       echo=lambda line: print(line, flush=True), processes=processes)
  except Exception as error:  # pylint: disable=broad-except
    if not preempted(error):
      raise
    print(f"\n{error}", flush=True)
    sys.exit(SIGTERM_EXIT)
  print(f"\n{FLAGS.out}/report.md: {len(report['recipes'])} recipes, {summary(report)} "
        f"({duration(report['seconds'])})")
  sys.exit(report["exit_status"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
