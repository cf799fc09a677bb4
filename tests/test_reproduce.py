"""`eval/reproduce.py` and the pinned files: the smoke suite against its pins, a broken loss
caught, the report, resuming, errors; `eval/regression_specs.py`; `eval/reproduction_table.py`."""

import json
import os
import pathlib
import shutil
import signal
import sys
import threading
import time

import pytest
import yaml

from eval import regression_specs, reproduce, reproduction_table
from tests.helpers import REPO, run_python

SPECS = regression_specs.load_all()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """The whole smoke suite, run once as users run it (its own process, one device)."""
  out = tmp_path_factory.mktemp("smoke")
  result = run_python(["eval/reproduce.py", "--suite=smoke", f"--out={out}"], check=False)
  return result, out, json.loads((out / "report.json").read_text())


def test_the_smoke_suite_reproduces_every_pinned_value(smoke):
  result, out, report = smoke
  assert result.returncode == 0, (out / "report.md").read_text() + result.stderr[-3000:]
  assert list(report["recipes"]) == [r for r, s in SPECS.items() if "smoke" in s.suites]
  for name, recipe in report["recipes"].items():
    pinned = SPECS[name].suites["smoke"].pins
    assert recipe["status"] == "ok" and pinned, name
    checked = {r["metric"] for r in recipe["rows"] if r["status"] == "ok"}
    assert checked == set(pinned), name  # every pinned metric measured and within tolerance


def test_progress_lines_and_report(smoke):
  result, out, report = smoke
  lines = result.stdout.splitlines()
  n = len(report["recipes"])
  for i, name in enumerate(report["recipes"], 1):
    assert any(line.startswith(f"[{i}/{n}] {name}: ok, ") and line.endswith(")")
               for line in lines), (name, lines)
  markdown = (out / "report.md").read_text()
  assert "| metric | measured | pinned | tolerance | status | paper |" in markdown
  assert "## dpr: DPR (Karpukhin et al. 2020)" in markdown
  assert ("python main.py --config=configs/dpr.py:smoke --config.train.num_steps=40 "
          "--config.train.checkpoint_every_steps=20 --workdir=") in markdown
  assert report["environment"]["cpu"]["model"]
  assert report["exit_status"] == 0 and report["failed"] == report["not_pinned"] == []
  assert "Exit status 0: all ok." in markdown and "The recipes' wall time: " in markdown


def test_rerunning_reuses_finished_stages(smoke):
  """Last of the fixture's tests: it rewrites the report."""
  _, out, report = smoke
  markers = {p: p.stat().st_mtime_ns for p in (out / "runs").glob(f"*/{reproduce.MARKER}")}
  lines, partial = [], []

  def echo(line):  # The report is written after each recipe, before its progress line.
    lines.append(line)
    partial.append(json.loads((out / "report.json").read_text()))

  again = reproduce.reproduce({"dpr": SPECS["dpr"], "tct_colbert": SPECS["tct_colbert"]},
                              "smoke", out, echo=echo)
  assert list(partial[0]["recipes"]) == ["dpr"] and partial[0]["pending"] == ["tct_colbert"]
  assert partial[0]["exit_status"] == 1 and partial[1]["exit_status"] == 0
  assert reproduce.summary(partial[0]) == "not run yet: tct_colbert"
  assert {p: p.stat().st_mtime_ns for p in markers} == markers  # nothing ran again
  for name in ("dpr", "tct_colbert"):
    assert again["recipes"][name]["measured"] == report["recipes"][name]["measured"]
  # A finished stage's time is its recorded one; TCT-ColBERT's teacher is the ColBERT recipe's
  # run (one workdir, trained once), so it counted for ColBERT first and for TCT alone now.
  assert again["recipes"]["dpr"]["seconds"] == report["recipes"]["dpr"]["seconds"]
  assert again["recipes"]["tct_colbert"]["seconds"] == pytest.approx(
      report["recipes"]["tct_colbert"]["seconds"] + report["recipes"]["colbert"]["seconds"],
      abs=0.2)
  assert report["recipes"]["tct_colbert"]["commands"][0].endswith(
      report["recipes"]["colbert"]["commands"][0].split()[-1])


def test_attempt_clock_adds_up_interrupted_attempts(tmp_path):
  path = tmp_path / reproduce.ATTEMPTS
  path.write_text("[100.0]")  # an earlier attempt, killed after 100 s
  with reproduce.AttemptClock(path, every=0.01) as clock:
    deadline = time.monotonic() + 5
    while len(json.loads(path.read_text() or "[]")) < 2 and time.monotonic() < deadline:
      time.sleep(0.01)
    assert json.loads(path.read_text())[0] == 100.0  # saved while running
  assert len(clock.attempts) == 2 and 100.0 <= clock.total < 110.0
  assert json.loads(path.read_text()) == clock.attempts


def test_a_sigterm_reaches_the_stage_process_and_stops_the_suite(tmp_path):
  """A preempted or `timeout`-ed reproduce.py must not leave its stage running, orphaned."""
  ready, stopped = tmp_path / "ready", tmp_path / "stopped"
  child = ("import pathlib, signal, sys, time\n"
           f"def stop(*_): pathlib.Path({str(stopped)!r}).touch(); sys.exit(143)\n"
           "signal.signal(signal.SIGTERM, stop)\n"
           f"pathlib.Path({str(ready)!r}).touch()\n"
           "time.sleep(60)\n")

  def terminate_once_ready():
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=terminate_once_ready, daemon=True).start()
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as exit_info:
    reproduce.run_passing_sigterm([sys.executable, "-c", child])
  assert exit_info.value.code == 143 and stopped.exists()
  assert signal.getsignal(signal.SIGTERM) is previous
  assert reproduce.run_passing_sigterm([sys.executable, "-c", "raise SystemExit(3)"]) == 3


def test_a_preempted_stage_exits_143_and_stops_the_suite(tmp_path, monkeypatch):
  """Training's `Preempted` (checkpoint saved) is neither a traceback nor one recipe's error."""
  from retrieval_jax import preemption  # pylint: disable=import-outside-toplevel

  def preempt(*unused_args, **unused_kwargs):
    raise preemption.Preempted(step=7, save_seconds=0.5)

  monkeypatch.setattr(reproduce, "run_stage", preempt)
  assert reproduce.stage_main(SPECS, "zeroshot/zeroshot", "smoke", tmp_path, None) == 143
  monkeypatch.setattr(reproduce, "run_recipe", preempt)
  with pytest.raises(preemption.Preempted):
    reproduce.reproduce({r: SPECS[r] for r in ("bm25", "zeroshot")}, "smoke", tmp_path)
  assert json.loads((tmp_path / "report.json").read_text())["pending"] == ["bm25", "zeroshot"]


# The gradient's reversal is the subtler break (the loss's value stays right); the negated
# value, a second DPR smoke run, is caught as surely and runs with -m slow.
@pytest.mark.parametrize("flip", [pytest.param("value", marks=pytest.mark.slow), "gradient"])
def test_a_sign_flipped_loss_fails_the_smoke_suite_naming_recipe_and_metric(tmp_path, flip):
  result = run_python(["tests/sign_flip_reproduce.py", "--suite=smoke", "--recipes=dpr",
                       f"--out={tmp_path}"], check=False, env={"SIGN_FLIP": flip})
  assert result.returncode == 1, result.stdout + result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("[1/1] dpr: regressed: "))
  assert "train/loss" in line, line
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["failed"] == ["dpr"]
  assert "| dpr | regressed | " in (tmp_path / "report.md").read_text()


def _regressions(tmp_path, recipes, edit=None):
  """A copy of some regression files, `edit(raw)` applied to the last."""
  directory = tmp_path / "regressions"
  directory.mkdir()
  for recipe in recipes:
    shutil.copy(SPECS[recipe].path, directory)
  if edit:
    path = directory / f"{recipes[-1]}.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(regression_specs.dump(raw))
  return directory


def test_a_wrong_pin_fails_with_status_1_naming_recipe_and_metric(tmp_path):
  def wrong(raw):
    raw["suites"]["smoke"]["pinned"]["metrics"]["dev/ndcg@10"]["value"] += 0.5
  directory = _regressions(tmp_path, ["bm25", "zeroshot"], wrong)  # zeroshot runs first
  result = run_python(["eval/reproduce.py", "--suite=smoke", f"--regressions_dir={directory}",
                       f"--out={tmp_path / 'out'}"], check=False)
  assert result.returncode == 1
  lines = result.stdout.splitlines()
  assert lines[0].startswith("[1/2] zeroshot: regressed: dev/ndcg@10 0.653297 (pinned 1.1533 ± ")
  assert lines[1].startswith("[2/2] bm25: ok, ")  # the others still run
  assert "failed: zeroshot" in lines[-1]


def test_stages_in_processes_of_their_own_and_a_failed_one(tmp_path):
  """--stage_processes (the cpu suite's default): the same pinned values; a stage whose process
  fails makes its recipe an error, and the other recipes still run."""
  def missing_data(raw):
    raw["suites"]["smoke"]["stages"][0]["overrides"]["data.name"] = str(tmp_path / "nowhere")
  directory = _regressions(tmp_path, ["bm25", "zeroshot"], missing_data)
  result = run_python(["eval/reproduce.py", "--suite=smoke", f"--regressions_dir={directory}",
                       "--stage_processes=true", f"--out={tmp_path / 'out'}"], check=False)
  assert result.returncode == 1
  lines = result.stdout.splitlines()
  assert lines[0].startswith("[1/2] zeroshot: error: RuntimeError: stage zeroshot exited with "
                             "status 1"), lines
  assert lines[1].startswith("[2/2] bm25: ok, 5 metrics within tolerance")
  assert "error: " in result.stderr and "nowhere" in result.stderr
  assert (tmp_path / "out" / "runs" / "zeroshot_bm25_1af012a3" / reproduce.MARKER).exists()


def test_command_line_errors_are_one_line(tmp_path):
  result = run_python(["eval/reproduce.py", "--recipes=nope", f"--out={tmp_path}"], check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: --recipes: unknown ['nope']")
  result = run_python(["eval/reproduce.py", "--pin", "--seeds=0,1", f"--out={tmp_path}"],
                      check=False)
  assert result.returncode == 1 and "--pin needs --seeds with at least 3" in result.stderr

  def broken(raw):
    del raw["suites"]["smoke"]["stages"][0]["config"]
  directory = _regressions(tmp_path, ["dpr"], broken)
  result = run_python(["eval/reproduce.py", f"--regressions_dir={directory}",
                       f"--out={tmp_path / 'out'}"], check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {directory / 'dpr.yaml'}.suites.smoke.stages[0]: missing key 'config'")


# eval/regression_specs.py


def test_every_recipe_has_both_suites_pinned_or_pending():
  assert set(SPECS) == set(regression_specs.ORDER)
  for name, spec in SPECS.items():
    assert set(spec.suites) == {"smoke", "cpu"}, name
    assert spec.suites["smoke"].pinned, f"{name}: the smoke suite is not pinned"
    for suite in spec.suites.values():
      for stage in suite.stages:
        assert (REPO / stage.config_file).is_file(), (name, stage)


def test_spec_errors_name_file_and_key(tmp_path):
  def load(raw):
    path = tmp_path / f"{raw.get('recipe', 'x')}.yaml"
    path.write_text(regression_specs.dump(raw))
    return path

  base = yaml.safe_load(SPECS["tct_colbert"].path.read_text())
  raw = json.loads(json.dumps(base))
  raw["recipe"] = "other"
  path = load(raw)
  path.rename(tmp_path / "tct_colbert.yaml")
  with pytest.raises(regression_specs.SpecError, match=r"tct_colbert.yaml.recipe: 'other' "
                     "differs from the file name"):
    regression_specs.load(tmp_path / "tct_colbert.yaml")
  raw = json.loads(json.dumps(base))
  raw["suites"]["cpu"]["stages"][1]["overrides"]["teacher.name"] = "{nobody}"
  with pytest.raises(regression_specs.SpecError, match=r"suites.cpu.stages\[1\].overrides."
                     r"teacher.name: \{nobody\} names no earlier stage"):
    regression_specs.load(load(raw))
  raw = json.loads(json.dumps(base))
  raw["suites"]["gpu"] = raw["suites"]["cpu"]
  with pytest.raises(regression_specs.SpecError, match=r"suites: unknown suites \['gpu'\]"):
    regression_specs.load(load(raw))
  raw = json.loads(json.dumps(base))
  raw["suites"]["smoke"]["pinned"]["metrics"]["dev/ndcg@10"]["tolerance"] = -1
  with pytest.raises(regression_specs.SpecError, match=r"metrics.dev/ndcg@10.tolerance: must "
                     r"be >= 0"):
    regression_specs.load(load(raw))
  raw = json.loads(json.dumps(base))
  raw["suites"]["smoke"]["pinned"]["metrics"]["train/steps_per_s"] = {"value": 1, "tolerance": 1}
  with pytest.raises(regression_specs.SpecError, match=r"metrics.train/steps_per_s: an ignored "
                     "metric"):
    regression_specs.load(load(raw))
  raw = json.loads(json.dumps(base))
  raw["suites"]["cpu"]["seed_key"] = 3
  with pytest.raises(regression_specs.SpecError, match=r"suites.cpu.seed_key: expected a dotted "
                     "config key, got 3"):
    regression_specs.load(load(raw))
  raw["suites"]["cpu"].update(seed_key="seed", seeded=False)
  with pytest.raises(regression_specs.SpecError, match=r"suites.cpu.seed_key: a suite with "
                     "seeded: false sets no seed"):
    regression_specs.load(load(raw))
  (tmp_path / "bad.yaml").write_text("recipe: [unclosed")
  with pytest.raises(regression_specs.SpecError, match="bad.yaml"):
    regression_specs.load(tmp_path / "bad.yaml")


def test_tolerance_is_three_sd_over_seeds_at_least_the_rounding_allowance():
  by_seed = {0: {"a": 1.0, "b": 0.5, "c": 7.0}, 1: {"a": 2.0, "b": 0.5, "c": 7.0},
             2: {"a": 3.0, "b": 0.5}}
  pins = regression_specs.pins_from_seeds(by_seed, own_seed=0)
  assert pins["a"] == {"value": 1.0, "tolerance": 3.0, "sd": 1.0, "min": 1.0, "max": 3.0}
  assert pins["b"]["tolerance"] == pytest.approx(  # the seeds agree
      0.5 * regression_specs.ROUNDING + regression_specs.ROUNDING_ABS)
  assert "c" not in pins  # seed 2 lacks it
  with pytest.raises(ValueError, match="at least 3 seeds"):
    regression_specs.pins_from_seeds({0: {}, 1: {}}, own_seed=0)
  with pytest.raises(ValueError, match="own"):
    regression_specs.pins_from_seeds({1: {}, 2: {}, 3: {}}, own_seed=0)
  unseeded = regression_specs.pins_from_seeds({0: {"a": 20.0}}, own_seed=0, seeded=False)
  assert unseeded == {"a": {"value": 20.0, "tolerance": pytest.approx(
      20.0 * regression_specs.ROUNDING + regression_specs.ROUNDING_ABS)}}


def test_compare_statuses_and_ignored_metrics():
  suite = SPECS["ance"].suites["smoke"]
  assert suite.ignored("train/negatives/staleness") and suite.ignored("train/steps_per_s")
  assert suite.ignored("teacher/dev_rerank/queries_per_s")
  assert not suite.ignored("train/loss")
  pins = suite.pins
  measured = {name: pin.value for name, pin in pins.items()}
  measured["train/loss"] += 2 * pins["train/loss"].tolerance + 1e-6
  measured["dev/new_metric"] = 1.0
  del measured["dev/ndcg@10"]
  rows = {r["metric"]: r["status"] for r in reproduce.compare(suite, measured)}
  assert rows["train/loss"] == "outside tolerance"
  assert rows["dev/ndcg@10"] == "missing"
  assert rows["dev/new_metric"] == "not pinned"
  assert rows["train/accuracy"] == "ok"
  assert reproduce.recipe_status(reproduce.compare(suite, measured), True) == "regressed"


def test_wall_time_names_each_seed_when_there_were_several():
  assert reproduce.wall_time({"seconds": 61.0, "seconds_by_seed": {"0": 61.0}}) == "1 min 1 s"
  assert reproduce.wall_time({"seconds": 3700.0, "seconds_by_seed": {"0": 1800.0, "1": 1900.0}}) \
      == "1 h 1 min (seed 0: 30 min 0 s; seed 1: 31 min 40 s)"
  assert reproduce.wall_time({"status": "error"}) == "0 s"


def test_report_shows_each_metrics_range_over_the_seeds():
  result = {"title": "T", "data": "D", "paper": "P", "pinned": {}, "commands": ["c"],
            "status": "ok", "seconds": 2.0, "seconds_by_seed": {"0": 1.0, "1": 1.0},
            "by_seed": {"0": {"dev/ndcg@10": 0.5, "train/lr": 1.5},
                        "1": {"dev/ndcg@10": 0.25}},
            "rows": [{"metric": m, "measured": v, "pinned": v, "tolerance": 0.1, "status": "ok",
                      "paper": None} for m, v in (("dev/ndcg@10", 0.5), ("train/lr", 1.5))]}
  report = {"suite": "cpu", "started": "now", "commit": "abc", "seconds": 2.0,
            "environment": {"cpu": {"model": "M", "usable_cpus": 2}}, "exit_status": 0,
            "failed": [], "not_pinned": [], "pending": [], "recipes": {"r": result}}
  lines = reproduce.report_markdown(report).splitlines()
  assert "| metric | measured | seeds 0, 1 (min–max) | pinned | tolerance | status | paper |" \
      in lines
  assert "| dev/ndcg@10 | 0.5 | 0.25–0.5 | 0.5 | ± 0.1 | ok | — |" in lines
  assert "| train/lr | 1.5 | — | 1.5 | ± 0.1 | ok | — |" in lines  # one seed has it
  result["by_seed"] = {"0": result["by_seed"]["0"]}
  lines = reproduce.report_markdown(report).splitlines()
  assert "| dev/ndcg@10 | 0.5 | 0.5 | ± 0.1 | ok | — |" in lines


def test_summary_names_failed_unpinned_and_pending_recipes():
  assert reproduce.summary({"failed": [], "not_pinned": [], "pending": []}) == "all ok"
  assert reproduce.summary({"failed": ["dpr"], "not_pinned": ["lamer", "bm25"],
                            "pending": ["sgopt"]}) == \
      "failed: dpr; not pinned: lamer, bm25; not run yet: sgopt"


def test_stage_workdirs_and_commands(tmp_path):
  student = SPECS["tct_colbert"].suites["cpu"].stages[1]
  workdir = reproduce.stage_workdir(tmp_path, student, None)
  assert workdir.parent == tmp_path / "runs" and workdir.name.startswith("tct_colbert_cpu_")
  assert reproduce.stage_workdir(tmp_path, student, 3).name == workdir.name + "_seed3"
  text = reproduce.command(student, workdir, {"teacher": "/t"}, 3)
  assert text == (f"python main.py --config=configs/tct_colbert.py:cpu --config.teacher.name=/t "
                  f"--config.seed=3 --workdir={workdir}")
  config = reproduce.load_config(student, {"teacher": "/t"}, 3)
  assert config.teacher.name == "/t" and config.seed == 3
  # LameR's randomness is its sampling: its seeds go there.
  lamer = SPECS["lamer"].suites["cpu"].stages[0]
  assert reproduce.own_seed(lamer) == 0
  assert reproduce.command(lamer, workdir, {}, 2).endswith(
      f" --config.evals.dev.sampling.seed=2 --workdir={workdir}")
  assert reproduce.load_config(lamer, {}, 2).evals.dev.sampling.seed == 2
  bad = regression_specs.Stage("x", "configs/dpr.py:cpu", {"optim.nope": 1})
  with pytest.raises(regression_specs.SpecError, match=r"stage x: cannot set "
                     r"config.optim.nope=1"):
    reproduce.load_config(bad, {}, None)


def test_pinning_writes_the_file_it_loads(tmp_path):
  directory = _regressions(tmp_path, ["sgopt"])
  spec = regression_specs.load(directory / "sgopt.yaml")
  pinned = {"date": "2026-12-07", "machine": "m", "commit": "c", "seeds": [0, 1, 2],
            "command": "python main.py ...",
            "metrics": regression_specs.pins_from_seeds(
                {s: {"sts_dev/spearman": 40.0 + s} for s in range(3)}, 0)}
  regression_specs.write_pinned(spec, "cpu", pinned)
  again = regression_specs.load(directory / "sgopt.yaml")
  assert again.suites["cpu"].pins["sts_dev/spearman"] == regression_specs.Pin(
      40.0, 3.0, 1.0, 40.0, 42.0)
  assert again.suites["smoke"].pinned == spec.suites["smoke"].pinned
  assert again.table == spec.table


# eval/reproduction_table.py


def test_workspace_table_agrees_with_the_pinned_files():
  text = (REPO / "WORKSPACE.md").read_text()
  assert reproduction_table.current(text) == reproduction_table.render(SPECS), (
      "run python eval/reproduction_table.py --write")


def test_table_rows_show_the_pinned_values(tmp_path):
  def pin(raw):
    raw["suites"]["cpu"]["pinned"] = {
        "date": "2026-12-07", "machine": "AMD EPYC, 2 CPUs", "commit": "abc", "seeds": [0, 1, 2],
        "command": "c", "metrics": {"sts_dev/spearman": {"value": 85.7012, "tolerance": 0.24}}}
  directory = _regressions(tmp_path, ["sgopt"], pin)
  table = reproduction_table.render(regression_specs.load_all(directory))
  row = next(line for line in table.splitlines() if line.startswith("| SG-OPT, laptop scale"))
  assert ("pinned (2026-12-07, AMD EPYC, 2 CPUs, seeds 0, 1, 2; `python eval/reproduce.py "
          "--suite=cpu --recipes=sgopt`): sts_dev/spearman 85.70 ± 0.24; ") in row
  workspace = tmp_path / "WORKSPACE.md"
  workspace.write_text("intro\n" + reproduction_table.render(SPECS) + "\nafter\n")
  args = ["eval/reproduction_table.py", f"--regressions_dir={directory}",
          f"--workspace={workspace}"]
  result = run_python(args + ["--check"], check=False)
  assert result.returncode == 1 and "differs" in result.stderr
  run_python(args + ["--write"])
  assert run_python(args + ["--check"]).returncode == 0
  assert workspace.read_text().startswith("intro\n") and workspace.read_text().endswith("after\n")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r, s in SPECS.items() if "cpu" in s.suites])
def test_cpu_suite(recipe, tmp_path_factory, scifact_dir):
  """The laptop-scale runs (hours in all); one directory for the session, so TCT-ColBERT
  reuses the ColBERT run. `RETRIEVAL_JAX_REPRO_OUT` keeps the runs across sessions."""
  out = os.environ.get("RETRIEVAL_JAX_REPRO_OUT") or tmp_path_factory.getbasetemp() / "cpu"
  result = run_python(["eval/reproduce.py", "--suite=cpu", f"--recipes={recipe}",
                       f"--out={out}"], check=False)
  report = pathlib.Path(out) / "report.md"
  assert result.returncode == 0, report.read_text() if report.exists() else result.stderr[-3000:]
