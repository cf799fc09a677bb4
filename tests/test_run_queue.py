"""`eval/run_queue.sh`, the helper the table queues (`eval/*_table.sh`) source."""

import pathlib
import subprocess

QUEUE = pathlib.Path(__file__).resolve().parents[1] / "eval" / "run_queue.sh"


def _queue(tmp_path: pathlib.Path, script: str, skip: str = "") -> str:
  subprocess.run(["bash", "-c", f"R={tmp_path}; T=$R/times.tsv; source {QUEUE}; {script}"],
                 check=True, env={"SKIP": skip, "PATH": "/usr/bin:/bin"})
  return (tmp_path / "times.tsv").read_text() if (tmp_path / "times.tsv").exists() else ""


def test_a_finished_run_is_marked_and_not_run_again(tmp_path):
  times = _queue(tmp_path, "run a echo first; run a echo second")
  assert (tmp_path / "a.done").exists()
  assert (tmp_path / "a.log").read_text() == "first\n"
  assert times.splitlines()[0].startswith("a\t") and len(times.splitlines()) == 1


def test_a_failed_run_is_logged_and_not_marked(tmp_path):
  times = _queue(tmp_path, "run bad false")
  assert times == "bad\tFAILED\n"
  assert not (tmp_path / "bad.done").exists()


def test_skipped_runs_are_left_for_later(tmp_path):
  _queue(tmp_path, "run a true; run b true; run c true; pending c || touch $R/c.left",
         skip="b c")
  assert (tmp_path / "a.done").exists()
  assert not (tmp_path / "b.done").exists() and not (tmp_path / "c.done").exists()
  assert not (tmp_path / "b.log").exists() and (tmp_path / "c.left").exists()
