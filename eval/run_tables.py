"""What the table scripts over a directory of runs share (`chang_table.py`, `sgopt_table.py`)."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Callable


def finished(runs: pathlib.Path, name: str) -> bool:
  """Whether the queue (`eval/run_queue.sh`) finished run `name`: it leaves `<name>.done`, so
  a run still training (or killed) never enters a table with its partial evaluations."""
  return (runs / f"{name}.done").exists()


def print_table(runs: str, out: str | None, collect: Callable[[pathlib.Path], dict],
                markdown: Callable[[dict], str]) -> int:
  """Prints `markdown(collect(runs))`, writes the collected table as JSON to `out` if given;
  returns the exit status (1 with one error line when `runs` is not a directory)."""
  root = pathlib.Path(runs)
  if not root.is_dir():
    print(f"error: --runs={root} is not a directory", file=sys.stderr)
    return 1
  result = collect(root)
  print(markdown(result))
  if out:
    pathlib.Path(out).write_text(json.dumps(result, indent=2))
  return 0
