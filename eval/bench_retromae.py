r"""Tokens/s of RetroMAE's pre-training step, and what the decoder adds to MLM alone.

The steps train on the same blocks (`configs/retromae.py` with `--variant`'s model and
data): `retromae` (encoder MLM + the enhanced decoder through the shared MLM head), `mlm`
(the encoder's MLM loss alone, `loss.type=mlm`) and `retromae_all_logits` (the `retromae`
step with the encoder's vocabulary logits at every position, as the reference computes
them, instead of at its labelled positions only: the same loss). Rounds alternate so load
changes hit all; each times `--steps` steps after the warm-up (compilation excluded). Tokens are the block
tokens the encoder reads (batch × `data.max_length`). Prints a table and writes JSON with
the CPU model.

  python eval/bench_retromae.py --variant=smoke --out=/tmp/retromae_smoke.json   # seconds
  python eval/bench_retromae.py --variant=cpu --steps=3 --rounds=3 --out=/tmp/retromae.json
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
from typing import Any, Sequence

from absl import app
from absl import flags

from eval import bench_harness
from retrieval_jax import host_malloc

FLAGS = flags.FLAGS
LOSSES = ("retromae", "mlm")
STEPS = LOSSES + ("retromae_all_logits",)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  flags.DEFINE_string("variant", "smoke", "configs/retromae.py variant.", flag_values=flag_values)
  flags.DEFINE_integer("steps", 5, "Timed steps per round.", flag_values=flag_values)
  flags.DEFINE_integer("rounds", 3, "Rounds per loss, alternating.", flag_values=flag_values)
  flags.DEFINE_integer("warmup_steps", 1, "Untimed steps first (compilation).",
                       flag_values=flag_values)
  flags.DEFINE_string("out", None, "JSON output file.", flag_values=flag_values)
  host_malloc.define_flag(flag_values)


def _stepper(name: str, variant: str, workdir: str):
  import jax  # pylint: disable=g-import-not-at-top

  from configs import retromae as retromae_config  # pylint: disable=g-import-not-at-top
  from retrieval_jax import sharding  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import retromae  # pylint: disable=g-import-not-at-top

  config = retromae_config.get_config(variant)
  config.loss.type = "mlm" if name == "mlm" else "retromae"
  recipe = retromae.build(config, workdir, sharding.mesh_from_config(config))
  train_step = recipe.train_step
  if name == "retromae_all_logits":
    train_step = functools.partial(train_step, encoder_predictions=int(config.data.max_length))
  step = jax.jit(train_step, in_shardings=(recipe.state_shardings, None, None),
                 out_shardings=(recipe.state_shardings, None), donate_argnums=0)

  def batch(index):
    return {k: jax.device_put(v, recipe.batch_sharding)
            for k, v in recipe.batcher.batch(index).items() if k not in recipe.batcher.host_keys}

  return config, recipe.init_state(), step, batch


def run(*, variant: str = "smoke", steps: int = 5, rounds: int = 3,
        warmup_steps: int = 1) -> dict[str, Any]:
  """The measurements (see the module docstring)."""
  if min(steps, rounds) < 1 or warmup_steps < 0:
    raise app.UsageError("--steps and --rounds must be >= 1, --warmup_steps >= 0")
  import jax  # pylint: disable=g-import-not-at-top

  load_start = os.getloadavg()
  runners, settings = {}, {}
  with tempfile.TemporaryDirectory() as workdir:
    for name in STEPS:
      config, state, step, batch = _stepper(name, variant, os.path.join(workdir, name))
      runners[name] = (state, step, [batch(i) for i in range(warmup_steps + steps)])
      settings = dict(batch_size=int(config.train.batch_size),
                      max_length=int(config.data.max_length), model=str(config.model.name))
    per_round = bench_harness.alternating_rounds(runners, steps=steps, rounds=rounds,
                                               warmup_steps=warmup_steps)
  tokens_per_step = settings["batch_size"] * settings["max_length"]
  tokens = {k: [v * tokens_per_step for v in values] for k, values in per_round.items()}
  return {"cpu": bench_harness.cpu_model(), "environment": bench_harness.environment(),
          "devices": jax.device_count(), "jax": jax.__version__, "variant": variant,
          "settings": settings, "steps": steps, "rounds": rounds, "warmup_steps": warmup_steps,
          "load": {"start": list(load_start), "end": list(os.getloadavg())},
          "steps_per_s": per_round, "tokens_per_s": tokens,
          "median_tokens_per_s": {k: statistics.median(v) for k, v in tokens.items()},
          "retromae_over_mlm_paired_median": bench_harness.paired_median(
              per_round, "retromae", "mlm"),
          "labelled_over_all_logits_paired_median": bench_harness.paired_median(
              per_round, "retromae", "retromae_all_logits")}


def format_table(result: dict[str, Any]) -> str:
  s = result["settings"]
  lines = [f"RetroMAE pre-training, {s['model']}, batch {s['batch_size']} x {s['max_length']} "
           f"tokens, {result['cpu']} ({result['devices']} devices)",
           "| step | median tokens/s | rounds (tokens/s) |", "|---|---|---|"]
  for name in STEPS:
    rounds = ", ".join(f"{v:.0f}" for v in result["tokens_per_s"][name])
    lines.append(f"| {name} | {result['median_tokens_per_s'][name]:.0f} | {rounds} |")
  lines.append(f"RetroMAE / MLM alone, steps/s (paired median): "
               f"{result['retromae_over_mlm_paired_median']:.3f}")
  lines.append(f"encoder logits at labelled positions / at every position, steps/s (paired "
               f"median): {result['labelled_over_all_logits_paired_median']:.3f}")
  return "\n".join(lines)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  host_malloc.ensure_or_exit(flag_values.malloc, may_reexec=__name__ == "__main__")
  result = run(variant=flag_values.variant, steps=flag_values.steps, rounds=flag_values.rounds,
               warmup_steps=flag_values.warmup_steps)
  print(format_table(result))
  bench_harness.write_json(result, flag_values.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
