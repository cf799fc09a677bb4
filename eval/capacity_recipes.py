"""The capacity plan's paper-recipe sections: per-device step cost and MFU, ANCE's refresh overlap.

Section 6 compiles (never runs) one device's training step of DPR (two BERT-base towers, batch
128, 256/256 tokens, AdamW, in-batch negatives) and ANCE (one RoBERTa-base tower, batch 64,
64/512 tokens, LAMB, no in-batch negatives) at each system's share of the paper's batch, and
reads XLA's cost analysis (FLOPs, bytes accessed) and memory analysis. The roofline bound
max(FLOPs / peak, bytes / HBM bandwidth) gives the MFU a chip could reach at best; the plan's
assumed MFU gives the step time.

Section 7 asks what setting chips aside for ANCE's refresh (`mesh.refresh_devices`) gives on a
TPU v4-32: a refresh every 10,000 steps re-encodes MS MARCO's 8.8M passages and the 503k
training queries, and ScaNN is built per host on its CPUs. Three schedules per refresh cycle:
  sync            train 10k steps on all chips, then encode on all chips, then build; the
                  chips wait for everything.
  async, shared   the refresh's encoding takes turns with training on the same chips (one
                  device runs one program at a time); the host-side build overlaps training.
  set aside c     train on 16 - c chips while c chips encode and the hosts build.
Chip-seconds are conserved: setting chips aside can only hide what the chips would otherwise
wait for (the host-side build and search), at the price of training on fewer chips.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

# RoBERTa-base (roberta-base): BERT-base's matmuls with a 50,265-token vocabulary.
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_layers=12, num_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1)
# HBM bandwidth per chip, bytes/s: TPU v4 1,228 GB/s; H100 SXM 3.35 TB/s.
HBM_BANDWIDTH = {"TPU v4-32": 1228e9, "8xH100 SXM": 3.35e12}


@dataclasses.dataclass(frozen=True)
class PaperRecipe:
  """A paper's training batch, as `configs/<recipe>.py` sets it by default."""
  name: str
  model: str
  global_queries: int
  query_tokens: int
  passage_tokens: int
  group: int            # passages per query: positive + hard negatives
  shared: bool          # one tower for queries and passages
  in_batch: bool        # other queries' passages are negatives too
  optimizer: str


RECIPES = (
    PaperRecipe("DPR", "BERT-base", 128, 256, 256, 2, shared=False, in_batch=True,
                optimizer="adamw"),
    PaperRecipe("ANCE", "RoBERTa-base", 64, 64, 512, 2, shared=True, in_batch=False,
                optimizer="lamb"),
)


@dataclasses.dataclass(frozen=True)
class RefreshSetup:
  """ANCE's refresh on MS MARCO passage (`configs/ance.py`, the paper's numbers)."""
  every_steps: int = 10_000
  passages: int = 8_841_823
  passage_tokens: int = 80     # average WordPiece/BPE tokens of a passage (assumed)
  queries: int = 502_939       # MS MARCO train queries
  query_tokens: int = 12       # average (assumed)


def recipe_entries(entry: Callable[..., dict], systems: Sequence[Any], measure: Any,
                   shapes: dict[str, dict], *, mfu: float, quick: bool, log: Callable) -> list:
  """Section 6: the per-device step of each paper recipe on each system.

  Args:
    entry: `capacity_plan.entry`.
    systems: `capacity_plan.System`s (only the first with `quick`).
    measure: The `capacity_measure` module.
    shapes: Model name -> EncoderConfig fields (BERT-base, RoBERTa-base; tiny with `quick`).
    mfu: The assumed model-FLOPs utilisation.
    quick: Tiny shapes: a quarter of the rows, at most 64 tokens.
    log: Progress messages.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  entries = []
  for recipe in RECIPES:
    config = measure.encoder_config(shapes[recipe.model], dtype=jnp.bfloat16)
    for system in systems[:1] if quick else systems:
      queries = max(1, recipe.global_queries // system.chips // (4 if quick else 1))
      q_tokens, p_tokens = ((min(32, recipe.query_tokens), min(64, recipe.passage_tokens))
                            if quick else (recipe.query_tokens, recipe.passage_tokens))
      log(f"[capacity_plan] {recipe.name}: compiling the {system.name} per-device step, "
          f"{queries} queries x {recipe.group} passages, {q_tokens}/{p_tokens} tokens")
      result = measure.measure_train_memory(
          config, queries=queries, group=recipe.group, query_tokens=q_tokens,
          passage_tokens=p_tokens, mode="full", shared=recipe.shared, in_batch=recipe.in_batch,
          optimizer=recipe.optimizer)
      where = dict(recipe=recipe.name, system=system.name, queries=queries,
                   passages=queries * recipe.group)
      how = (f"compiled {recipe.name} train_step for one device ({recipe.model}, "
             f"{queries} x ({q_tokens} + {recipe.group} x {p_tokens}) tokens, bf16 compute)")
      compute_s = result["flops"] / system.peak_flops
      memory_s = result["bytes_accessed"] / HBM_BANDWIDTH[system.name]
      entries += [
          entry("recipes", "step FLOPs per device", result["flops"], "FLOP", "measured",
                f"XLA cost analysis of the {how}", **where),
          entry("recipes", "step bytes accessed per device", result["bytes_accessed"], "bytes",
                "measured", f"XLA:CPU cost analysis of the {how}: an upper bound for the "
                "accelerator, whose fusions keep more in registers/VMEM", **where),
          entry("recipes", "step memory per device", result["peak_bytes"], "bytes", "measured",
                "memory_analysis(): argument + output - aliased + temp", **where),
          entry("recipes", "roofline MFU bound", compute_s / max(compute_s, memory_s),
                "fraction",
                "computed", "FLOPs/peak over max(FLOPs/peak, bytes / "
                f"{HBM_BANDWIDTH[system.name]:.3g} B/s HBM)", **where),
          entry("recipes", "step time at MFU", result["flops"] / (system.peak_flops * mfu), "s",
                "computed", f"step FLOPs / ({system.peak_flops:.3g} x {mfu}); collectives "
                "(gradient all-reduce, in-batch all-gather) not counted", **where),
      ]
  return entries


def refresh_entries(entry: Callable[..., dict], system: Any, *, step_flops_per_device: float,
                    flops_per_token: float, build_s: float, mfu: float,
                    setup: RefreshSetup = RefreshSetup(), global_queries: int = 64,
                    set_aside: Sequence[int] = (4, 8)) -> tuple[list, list[str]]:
  """Section 7: one ANCE refresh cycle on `system` under each schedule.

  Args:
    entry: `capacity_plan.entry`.
    system: The `capacity_plan.System` (the TPU v4-32).
    step_flops_per_device: ANCE's measured per-device step FLOPs at `system.chips` chips.
    flops_per_token: The encoder's measured forward FLOPs per token at the passage length.
    build_s: ScaNN build time of one host's shard (extrapolated, all vCPUs).
    mfu: The assumed model-FLOPs utilisation.
    setup: The refresh's sizes and interval.
    global_queries: ANCE's batch (it must divide over the training chips).
    set_aside: Chips set aside in total (a multiple of the hosts: the same on each).

  Returns:
    (entries, notes): a note for each split the batch does not allow.
  """
  chip_rate = system.peak_flops * mfu
  step_flops = step_flops_per_device * system.chips  # rows split evenly: total work per step
  train_s = lambda chips: setup.every_steps * step_flops / (chips * chip_rate)
  tokens = setup.passages * setup.passage_tokens + setup.queries * setup.query_tokens
  encode_s = lambda chips: tokens * flops_per_token / (chips * chip_rate)
  where = dict(system=system.name)
  entries = [entry("refresh", "encode FLOPs per refresh", tokens * flops_per_token, "FLOP",
                   "computed", f"({setup.passages} x {setup.passage_tokens} + {setup.queries} x "
                   f"{setup.query_tokens}) tokens x {flops_per_token:.4g} FLOP/token (measured)",
                   **where)]

  notes = []

  def schedule(name: str, cycle: float, stale_s: float, how: str, chips: int) -> None:
    step_s = train_s(chips) / setup.every_steps
    entries.extend([
        entry("refresh", "cycle time", cycle, "s", "computed", how, schedule=name, **where),
        entry("refresh", "training steps per hour", 3600 * setup.every_steps / cycle, "steps/h",
              "computed", f"{setup.every_steps} steps per cycle", schedule=name, **where)])
    if stale_s:  # sync: none, by construction
      entries.append(entry("refresh", "staleness", stale_s / step_s, "steps", "computed",
                           "steps trained between the snapshot and the new negatives",
                           schedule=name, **where))

  full = system.chips
  schedule("sync", train_s(full) + encode_s(full) + build_s, 0.0,
           "train + encode on all chips + build; chips idle during the build", full)
  schedule("async, shared chips", train_s(full) + encode_s(full),
           encode_s(full) + build_s, "train + encode on the same chips (time-sliced); the "
           "build overlaps training", full)
  for aside in set_aside:
    name = f"set aside {aside} ({aside // system.hosts} per host)"
    chips = full - aside
    if global_queries % chips:
      notes.append(f"{name}: batch {global_queries} does not divide over {chips} training chips")
      continue
    refresh = encode_s(aside) + build_s
    schedule(name, max(train_s(chips), refresh), refresh,
             f"max(train on {chips} chips, encode on {aside} + build)", chips)
  return entries, notes


def format_sections(plan: dict[str, Any], cell: Callable, fmt_s: Callable,
                    fmt_gib: Callable) -> list[str]:
  """Sections 6 and 7 as markdown (the plan's `cell` labels each value)."""
  out = ["\n**6. Paper recipes: one device's training step (XLA cost and memory analysis)**\n",
         "| recipe | system | rows/device (q + p) | step FLOPs | bytes accessed | memory | "
         "roofline MFU bound | step time at MFU |", "|---|---|---|---|---|---|---|---|"]
  rows = [e for e in plan["entries"] if e["section"] == "recipes"
          and e["quantity"] == "step FLOPs per device"]
  pick = lambda quantity, e: next(
      x for x in plan["entries"] if x["section"] == "recipes" and x["quantity"] == quantity
      and x["recipe"] == e["recipe"] and x["system"] == e["system"])
  for e in rows:
    out.append(
        f"| {e['recipe']} | {e['system']} | {e['queries']} + {e['passages']} | "
        f"{cell(e, lambda v: f'{v:.3g}')} | "
        f"{cell(pick('step bytes accessed per device', e), lambda v: f'{v / 1e9:.1f} GB')} | "
        f"{cell(pick('step memory per device', e), fmt_gib)} | "
        f"{cell(pick('roofline MFU bound', e), lambda v: f'{v:.0%}')} | "
        f"{cell(pick('step time at MFU', e), fmt_s)} |")
  refresh = [e for e in plan["entries"] if e["section"] == "refresh" and "schedule" in e]
  if refresh:
    system = refresh[0]["system"]
    out += [f"\n**7. ANCE's refresh on a {system}: a cycle of 10,000 steps + one refresh**\n",
            "| schedule | cycle time | steps/hour | staleness (steps) | how |",
            "|---|---|---|---|---|"]
    by = lambda quantity, name: next((x for x in refresh if x["quantity"] == quantity
                                      and x["schedule"] == name), None)
    for name in dict.fromkeys(e["schedule"] for e in refresh):
      cycle, stale = by("cycle time", name), by("staleness", name)
      out.append(f"| {name} | {cell(cycle, fmt_s)} | "
                 f"{cell(by('training steps per hour', name), lambda v: f'{v:,.0f}')} | "
                 f"{cell(stale, lambda v: f'{v:,.0f}') if stale else '0'} | {cycle['how']} |")
    out += [f"\nNot possible: {note}." for note in plan["assumptions"].get("refresh_notes", [])]
  return out
