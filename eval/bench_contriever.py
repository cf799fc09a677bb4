r"""Steps/s of Contriever's MoCo step against its in-batch step, and what the queue costs.

The steps train the same encoder on the same crop batches (`configs/contriever.py` with
`--variant`'s model and data):
  moco         the recipe: EMA update, the key forward without gradient, [B, K] logits
               against the queue, the enqueue; gradients through the query crops only;
  moco_queue_b the same with a queue of one batch (K = B): against `moco`, what the queue
               itself costs;
  in_batch     `src/inbatch.py`: both crops through the encoder with gradient, no EMA,
               no queue.
Rounds alternate (moco, moco_queue_b, in_batch, ...) so load changes hit all; each round
times `--steps` steps after the warm-up (compilation excluded). Prints a table and writes
JSON with the CPU model.

  python eval/bench_contriever.py --variant=cpu --steps=5 --rounds=3 --out=/tmp/moco.json
  python eval/bench_contriever.py --variant=smoke --out=/tmp/moco_smoke.json   # seconds
"""

from __future__ import annotations

import os
import statistics
import tempfile
from typing import Any, Sequence

from absl import app
from absl import flags

from eval import bench_harness
from retrieval_jax import host_malloc

FLAGS = flags.FLAGS
# Step name -> (loss.type, queue of one batch).
STEPS = {"moco": ("moco", False), "moco_queue_b": ("moco", True), "in_batch": ("in_batch", False)}


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  flags.DEFINE_enum("variant", "cpu", ["cpu", "smoke"], "configs/contriever.py variant.",
                    flag_values=flag_values)
  flags.DEFINE_integer("steps", 5, "Timed steps per round.", flag_values=flag_values)
  flags.DEFINE_integer("rounds", 3, "Rounds per loss, alternating.", flag_values=flag_values)
  flags.DEFINE_integer("warmup_steps", 1, "Untimed steps first (compilation).",
                       flag_values=flag_values)
  flags.DEFINE_integer("queue_size", None, "Override loss.queue_size.", flag_values=flag_values)
  flags.DEFINE_string("out", None, "JSON output file.", flag_values=flag_values)
  host_malloc.define_flag(flag_values)


def _stepper(loss_type: str, variant: str, queue_size: int | None, workdir: str,
             one_batch_queue: bool = False):
  import jax  # pylint: disable=g-import-not-at-top

  from configs import contriever as contriever_config  # pylint: disable=g-import-not-at-top
  from retrieval_jax import sharding  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import contriever  # pylint: disable=g-import-not-at-top

  config = contriever_config.get_config(variant)
  config.loss.type = loss_type
  if queue_size is not None:
    config.loss.queue_size = queue_size
  if one_batch_queue:
    config.loss.queue_size = config.train.batch_size
  mesh = sharding.mesh_from_config(config)
  recipe = contriever.build(config, workdir, mesh)
  step = jax.jit(recipe.train_step, in_shardings=(recipe.state_shardings, None, None),
                 out_shardings=(recipe.state_shardings, None), donate_argnums=0)

  def batch(index):
    local = recipe.batcher.batch(index)
    return {k: jax.device_put(v, recipe.batch_sharding) for k, v in local.items()
            if k not in recipe.batcher.host_keys}

  return config, recipe.init_state(), step, batch


def run(*, variant: str = "cpu", steps: int = 5, rounds: int = 3, warmup_steps: int = 1,
        queue_size: int | None = None) -> dict[str, Any]:
  """The measurements (see the module docstring)."""
  if min(steps, rounds) < 1 or warmup_steps < 0:
    raise app.UsageError("--steps and --rounds must be >= 1, --warmup_steps >= 0")
  import jax  # pylint: disable=g-import-not-at-top

  load_start = os.getloadavg()
  runners, settings = {}, {}
  with tempfile.TemporaryDirectory() as workdir:
    for name, (loss_type, one_batch_queue) in STEPS.items():
      config, state, step, batch = _stepper(loss_type, variant, queue_size,
                                            os.path.join(workdir, name), one_batch_queue)
      batches = [batch(i) for i in range(warmup_steps + steps)]
      runners[name] = [state, step, batches]
      if name == "moco":
        settings = dict(batch_size=int(config.train.batch_size),
                        queue_size=int(config.loss.queue_size), model=str(config.model.name),
                        chunk_length=int(config.data.crop.chunk_length))
    per_round = bench_harness.alternating_rounds(runners, steps=steps, rounds=rounds,
                                               warmup_steps=warmup_steps)
  medians = {k: statistics.median(v) for k, v in per_round.items()}
  return {"cpu": bench_harness.cpu_model(), "environment": bench_harness.environment(),
          "devices": jax.device_count(),
          "jax": jax.__version__, "variant": variant, "settings": settings,
          "steps": steps, "rounds": rounds, "warmup_steps": warmup_steps,
          "load": {"start": list(load_start), "end": list(os.getloadavg())},
          "steps_per_s": per_round, "median_steps_per_s": medians,
          "moco_over_in_batch_paired_median": bench_harness.paired_median(
              per_round, "moco", "in_batch"),
          "moco_over_moco_queue_b_paired_median": bench_harness.paired_median(
              per_round, "moco", "moco_queue_b")}


def format_table(result: dict[str, Any]) -> str:
  s = result["settings"]
  lines = [f"Contriever steps/s, {s['model']}, batch {s['batch_size']}, queue "
           f"{s['queue_size']}, {result['cpu']} ({result['devices']} devices)",
           "| step | median steps/s | rounds |", "|---|---|---|"]
  for name in STEPS:
    rounds = ", ".join(f"{v:.3f}" for v in result["steps_per_s"][name])
    lines.append(f"| {name} | {result['median_steps_per_s'][name]:.3f} | {rounds} |")
  lines.append(f"steps/s ratios (paired medians): MoCo / in-batch "
               f"{result['moco_over_in_batch_paired_median']:.3f}; MoCo / MoCo with a "
               f"one-batch queue {result['moco_over_moco_queue_b_paired_median']:.3f} "
               "(the queue's own cost)")
  return "\n".join(lines)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  host_malloc.ensure_or_exit(flag_values.malloc, may_reexec=__name__ == "__main__")
  result = run(variant=flag_values.variant, steps=flag_values.steps, rounds=flag_values.rounds,
               warmup_steps=flag_values.warmup_steps, queue_size=flag_values.queue_size)
  print(format_table(result))
  bench_harness.write_json(result, flag_values.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
