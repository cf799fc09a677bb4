r"""retrieval_jax launcher: one config per paper recipe, overridable from the command line.

  python main.py --config=configs/dpr.py:cpu --workdir=/tmp/dpr_cpu
  python main.py --config=configs/dpr.py --config.optim.lr=2e-5 --workdir=/tmp/dpr
  python main.py --config=configs/dpr.py:cpu --workdir=/tmp/dpr_cpu --mode=eval
  python main.py --config=configs/zeroshot.py --workdir=/tmp/zeroshot

`--config=FILE[:VARIANT]` loads `get_config(VARIANT)` from FILE; `--config.a.b=value`
overrides one field (an unknown field is an error). Everything goes to `--workdir`; running
the same command again resumes from its latest checkpoint. `--mode=eval` runs the config's
evaluators (`config.evals`) on the checkpoint `--step` (default the latest) of a trained
recipe; an evaluation-only recipe (`zeroshot`) evaluates in `eval` and `train_and_eval` modes.
`--workdir` may be a bucket path (`gs://bucket/run`).

Resuming with a config that differs from the workdir's `config.json` in anything that changes
the training is refused with the differing keys (`--allow_config_change` accepts them). On
SIGTERM (preemption) every process saves a checkpoint of the current step and the command
exits with status 143; rerunning it resumes.

Several processes (TPU pods, GPU clusters, `launch/local_multiprocess.sh`) run this same
command; `--coordinator_address --num_processes --process_id`, or the cluster's environment
(`--distributed=auto`), join them through `jax.distributed`. Only process 0 writes logs,
metrics, evaluation files and exports; every process takes part in checkpoints.

Before anything else the program re-executes itself with tcmalloc preloaded when the system
has it (`--malloc`, default `auto`; `retrieval_jax/host_malloc.py`): under glibc's malloc
XLA:CPU faults its buffers in afresh on every call. `--malloc=system` keeps the C library's.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from retrieval_jax import host_malloc  # imports neither JAX nor the rest of the library

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results and checkpoints.")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"],
                          "What to run.")
_STEP = flags.DEFINE_string(
    "step", None, "--mode=eval: the checkpoint step, or 'best' (default: the best checkpoint "
    "when the run selected one with train.select_best, else the latest).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume even when the config differs from the workdir's config.json in keys that change "
    "the training (the old file is kept as config.step_<N>.json).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "true", "false"],
    "Call jax.distributed.initialize(): auto = when SLURM, Open MPI, a multi-host TPU or "
    "JAX_COORDINATOR_ADDRESS describes a multi-process job.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: HOST:PORT of process 0's coordinator "
    "(with --num_processes and --process_id; see launch/).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Multi-process: the number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_MALLOC = host_malloc.define_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # First: preloading an allocator re-executes this program, before JAX starts.
  host_malloc.ensure_or_exit(_MALLOC.value, may_reexec=__name__ == "__main__")
  step = _STEP.value
  if step is not None and step != "best":
    if not step.isdigit():
      raise app.UsageError(f"--step={step!r} must be a step number or 'best'")
    step = int(step)
  # Imported here: nothing may touch a JAX device before jax.distributed is initialised.
  from retrieval_jax import distributed  # pylint: disable=g-import-not-at-top

  try:
    distributed.maybe_initialize(_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                                 num_processes=_NUM_PROCESSES.value,
                                 process_id=_PROCESS_ID.value)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  logging.info("%s", distributed.describe())
  chief = distributed.jax.process_index() == 0  # the one process that prints and writes
  if not chief:
    logging.set_verbosity(logging.WARNING)  # one log per job, not one per host
  config = _CONFIG.value
  # pylint: disable=g-import-not-at-top
  from retrieval_jax import evaluation, files, preemption, recipes, run_config, train

  workdir = files.as_path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)

  try:
    module = recipes.get(config.get("recipe", None))
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  if _MODE.value == "train" and not recipes.trains(module):
    raise app.UsageError(f"recipe {config.recipe!r} has no training steps: use --mode=eval "
                         "or train_and_eval")
  try:
    summary = train.run(config, workdir, _MODE.value, step,
                        allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except run_config.InputError as error:  # a bad key or input (a changed config included)
    sys.exit(f"error: {error}")  # one line, status 1: not a usage mistake, no usage text
  except preemption.Preempted as stopped:
    logging.warning("%s", stopped)
    if chief:
      print(f"\n{stopped}", flush=True)
    sys.exit(preemption.EXIT_CODE)
  if not chief:
    return
  for report in summary.get("reports", []):
    print("\n" + report)
  if summary.get("eval"):
    shown = summary.get("eval_step", summary["step"])
    at = "" if shown is None else f" at step {shown}"
    if "best" in summary.get("info", {}):
      at += f" (the best {config.train.select_best})"
    print(f"\n{config.recipe}{at}")
    print(evaluation.format_table(summary["eval"]))
  logging.info("summary: %s", json.dumps(summary, default=str))


if __name__ == "__main__":
  app.run(main)
