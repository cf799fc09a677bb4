"""Capacity plan for multi-host dense retrieval: storage, encoding, ScaNN, training memory.

Two corpora (DPR's 21M Wikipedia passages, MS MARCO passage) on two systems (a Cloud TPU v4-32
slice, one 8 x H100 SXM host), with BERT-base (DPR's and ANCE's encoder) as the model. Every
number is labelled:

  measured      on this machine, by the command that printed it (XLA cost / memory analysis of
                our compiled programs, ScaNN builds, a CPU encoding run; see
                `capacity_measure.py` for what is measured and how);
  computed      from a formula and the stated assumptions (chip peak rates, an MFU, sizes);
  extrapolated  computed from measured points (ScaNN build time at the per-shard size).

The measured FLOPs per token are checked against 2 x matmul parameters + 4 x length x hidden x
layers (attention), and the compiled training memory against an analytic activation count
(Korthikanti et al. 2022).

Usage:
  python eval/capacity_plan.py --out=/tmp/capacity_plan.json
  python eval/capacity_plan.py --quick                           # tiny sizes (tests)

`--quick` keeps the BERT-base FLOPs measurement but compiles the training step of a tiny
2-layer model at a quarter of the rows and shorter lengths, and builds tiny ScaNN indices: its
numbers check the plumbing, not the plan.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags

from eval import capacity_measure as measure
from eval import capacity_recipes

FLAGS = flags.FLAGS
GIB = 2 ** 30
DIM = 768
LABELS = ("measured", "computed", "extrapolated")

# The model: BERT-base (bert-base-uncased), DPR's and ANCE's encoder.
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)
# --quick: the training-memory compiles use this shape instead, so that they stay short.
TINY = dict(vocab_size=1024, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
            max_position_embeddings=128)


@dataclasses.dataclass(frozen=True)
class System:
  """An accelerator system.

  Attributes:
    name: Short name used in tables.
    chips: Accelerator chips (data-parallel devices).
    hosts: Host machines (processes).
    peak_flops: Dense bf16 peak per chip, FLOP/s.
    hbm_bytes: Accelerator memory per chip.
    host_vcpus: vCPUs of each host (ScaNN builds there).
    scann_shards: ScaNN indices the corpus is split into.
    note: Where the numbers come from.
  """
  name: str
  chips: int
  hosts: int
  peak_flops: float
  hbm_bytes: float
  host_vcpus: int
  scann_shards: int
  note: str


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A passage corpus: size and token lengths (BERT WordPiece, special tokens included)."""
  name: str
  passages: int
  avg_tokens: int
  max_tokens: int
  note: str


SYSTEMS = (
    System("TPU v4-32", chips=16, hosts=4, peak_flops=275e12, hbm_bytes=32 * GIB,
           host_vcpus=240, scann_shards=4,
           note="16 v4 chips (32 cores), 4 TPU VM hosts of 240 vCPUs; 275 TFLOP/s bf16 and "
                "32 GiB HBM per chip; one ScaNN shard per host"),
    System("8xH100 SXM", chips=8, hosts=1, peak_flops=989e12, hbm_bytes=80e9,
           host_vcpus=208, scann_shards=8,
           note="one host (e.g. a3-highgpu-8g, 208 vCPUs); 989 TFLOP/s dense bf16 and 80 GB "
                "HBM per GPU; 8 ScaNN shards (one per GPU's slice of the corpus), built "
                "concurrently on the host, 26 vCPUs each"),
)
CORPORA = (
    Corpus("DPR Wikipedia", 21_015_324, avg_tokens=128, max_tokens=256,
           note="psgs_w100: 100-word passages + title; ~128 WordPiece tokens on average "
                "(assumed), capped at 256"),
    Corpus("MS MARCO passage", 8_841_823, avg_tokens=80, max_tokens=256,
           note="~56 words per passage; ~80 WordPiece tokens on average (assumed), capped at 256"),
)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """The DPR training batch the memory rows plan for."""
  global_queries: int = 4096
  group: int = 2                # passages per query: its positive + 1 hard negative
  query_tokens: int = 64
  passage_tokens: int = 256


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags on `flag_values` (not at import: other CLIs in tests define `--out`)."""
  flags.DEFINE_string("out", None, "Write every number, its label and the assumptions as JSON.",
                      flag_values=flag_values)
  flags.DEFINE_bool("quick", False, "Tiny sizes (< 1 min): checks the plumbing, not the plan.",
                    flag_values=flag_values)
  flags.DEFINE_float("mfu", 0.4, "Model-FLOPs utilisation assumed for encoding and training "
                     "time.", flag_values=flag_values)
  flags.DEFINE_list("chunk_sizes", ["32"], "GradCache chunk sizes (rows per forward) to compile.",
                    flag_values=flag_values)
  flags.DEFINE_list("scann_sizes", ["10000", "40000"], "Vectors per measured ScaNN build (two "
                    "or more; --quick uses 2000,4000).", flag_values=flag_values)
  flags.DEFINE_bool("cpu_anchor", True, "Also measure our CPU encoding throughput with the "
                    "packaged MiniLM (skipped with --quick).", flag_values=flag_values)


# --- small helpers --------------------------------------------------------------------------------


def entry(section: str, quantity: str, value: float, unit: str, label: str, how: str,
          **where: Any) -> dict[str, Any]:
  """One number of the plan with its unit, label and derivation."""
  if label not in LABELS:
    raise ValueError(f"label {label!r} is not one of {LABELS}")
  return dict(section=section, quantity=quantity, value=value, unit=unit, label=label, how=how,
              **where)


def _fmt_bytes(n: float) -> str:
  """Bytes in decimal MB, GB or TB."""
  if n >= 1e12:
    return f"{n / 1e12:.2f} TB"
  if n >= 1e9:
    return f"{n / 1e9:.2f} GB"
  return f"{n / 1e6:.1f} MB"


def _fmt_gib(n: float) -> str:
  """Bytes in binary MiB or GiB."""
  return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2 ** 20:.0f} MiB"


def _fmt_s(s: float) -> str:
  """Seconds in ms, s, min, h or d."""
  if s < 1:
    return f"{s * 1e3:.0f} ms"
  if s >= 2 * 86400:
    return f"{s / 86400:.1f} d"
  if s >= 2 * 3600:
    return f"{s / 3600:.1f} h"
  if s >= 120:
    return f"{s / 60:.1f} min"
  return f"{s:.1f} s"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


# --- analytic formulas (computed) ----------------------------------------------------------------


def analytic_flops_per_token(config, length: int) -> float:
  """Forward FLOPs per token of one tower at `length` tokens, by formula.

  2 x (matmul parameters) + attention (QK^T and AV: 4 x length x hidden per layer), plus the
  pooler's 2 x hidden^2 per sequence spread over its tokens. Embedding lookups, softmax, GELU and
  LayerNorm are not counted (XLA counts their elementwise FLOPs too).
  """
  h, ff, layers = config.hidden_size, config.intermediate_size, config.num_layers
  matmul_params = layers * (4 * h * h + 2 * h * ff)
  return 2 * matmul_params + 4 * length * h * layers + 2 * h * h / length


def analytic_activation_bytes(config, rows: int, length: int) -> float:
  """Activation bytes one tower keeps for the backward over `rows` sequences, by formula.

  bf16, dropout masks in bytes, no recomputation: s*h*(34 + 5*a*s/h) per layer and sequence
  (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  eq. 1).
  """
  h, a = config.hidden_size, config.num_heads
  return rows * config.num_layers * length * h * (34 + 5 * a * length / h)


# --- the plan -------------------------------------------------------------------------------------


def _per_device_rows(setup: TrainSetup, system: System, scale: int) -> int:
  """Queries per device when the global batch is split evenly (and divided by `scale`)."""
  return setup.global_queries // system.chips // scale


def build_plan(*, quick: bool = False, mfu: float = 0.4, chunk_sizes: Sequence[int] = (32,),
               scann_sizes: Sequence[int] = (10_000, 40_000), cpu_anchor: bool = True,
               log=print) -> dict[str, Any]:
  """Measures what it can here and computes the rest; returns entries, measurements, assumptions.

  Args:
    quick: Tiny sizes: the training-memory compiles use a 2-layer 64-wide model, a quarter of
      the per-device rows and 32/64 tokens, the first system only, full batch and GradCache
      (chunk 8); ScaNN builds 2,000 and 4,000 vectors; no CPU anchor.
    mfu: Model-FLOPs utilisation for the computed times.
    chunk_sizes: GradCache chunk sizes (rows per forward; must divide the per-device rows).
    scann_sizes: Sizes of the measured ScaNN builds (at least two).
    cpu_anchor: Measure MiniLM encoding throughput on this machine.
    log: Progress messages (stderr-like).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  started = time.perf_counter()
  load_start = os.getloadavg()[0]
  setup = TrainSetup()
  bert = measure.encoder_config(BERT_BASE, dtype=jnp.bfloat16)
  entries: list[dict[str, Any]] = []
  measurements: dict[str, Any] = {}
  tower_params = measure.param_count(bert)

  # 1. Embedding storage (computed).
  for corpus in CORPORA:
    for dtype_name, itemsize in (("float32", 4), ("bfloat16/float16", 2)):
      total = corpus.passages * DIM * itemsize
      where = dict(corpus=corpus.name, dtype=dtype_name)
      entries.append(entry("storage", "embeddings, whole corpus", total, "bytes", "computed",
                           f"{corpus.passages} x {DIM} x {itemsize} B", **where))
      for system in SYSTEMS:
        for unit, count in (("host", system.hosts), ("device", system.chips)):
          entries.append(entry(
              "storage", f"embeddings per {unit}", math.ceil(corpus.passages / count) * DIM
              * itemsize, "bytes", "computed",
              f"ceil({corpus.passages} / {count} {unit}s) x {DIM} x {itemsize} B",
              system=system.name, **where))

  # 2. FLOPs per token (measured) and encoding time (computed).
  lengths = sorted({c.avg_tokens for c in CORPORA} | {c.max_tokens for c in CORPORA})
  log(f"[capacity_plan] FLOPs: compiling the BERT-base forward at lengths {lengths}")
  flops = measure.measure_flops(bert, 8 if quick else 64, lengths,
                               functools.partial(analytic_flops_per_token, bert))
  measurements["flops"] = {str(k): v for k, v in flops.items()}
  for length, f in flops.items():
    entries.append(entry("flops", "forward FLOPs per token", f["flops_per_token"], "FLOP",
                         "measured", f"XLA cost analysis of TextEncoder(BERT-base) forward at "
                         f"[{f['batch']}, {length}] / {f['batch'] * length} tokens",
                         length=length))
    entries.append(entry("flops", "forward FLOPs per token, analytic",
                         f["analytic_flops_per_token"], "FLOP", "computed",
                         "2 x matmul params + 4 x L x h x layers + 2h^2/L", length=length))
  for corpus in CORPORA:
    tokens = corpus.passages * corpus.avg_tokens
    per_token = flops[corpus.avg_tokens]["flops_per_token"]
    padded_tokens = corpus.passages * corpus.max_tokens
    padded_per_token = flops[corpus.max_tokens]["flops_per_token"]
    for system in SYSTEMS:
      rate = system.chips * system.peak_flops * mfu
      where = dict(corpus=corpus.name, system=system.name)
      entries.append(entry(
          "encode", "encode time", tokens * per_token / rate, "s", "computed",
          f"{corpus.passages} x {corpus.avg_tokens} tokens x {per_token:.4g} FLOP/token "
          f"(measured at L={corpus.avg_tokens}) / ({system.chips} x {system.peak_flops:.3g} x "
          f"{mfu})", **where))
      entries.append(entry(
          "encode", "encode time, all padded to max", padded_tokens * padded_per_token / rate,
          "s", "computed", f"{corpus.passages} x {corpus.max_tokens} tokens x "
          f"{padded_per_token:.4g} FLOP/token / ({system.chips} x {system.peak_flops:.3g} x "
          f"{mfu})", **where))

  if cpu_anchor and not quick:
    log("[capacity_plan] CPU anchor: MiniLM encoding here")
    anchor = measure.measure_cpu_anchor()
    measurements["cpu_anchor"] = anchor
    entries.append(entry("encode", "CPU anchor: MiniLM texts/s here", anchor["texts_per_s"],
                         "texts/s", "measured",
                         f"encode.encode_token_ids, {anchor['texts']} x {anchor['length']} "
                         f"tokens, batch {anchor['batch_size']}, best of 2, "
                         f"{anchor['cpu_count']} CPU cores", system="this machine"))
    entries.append(entry("encode", "CPU anchor: achieved FLOP/s here", anchor["achieved_flops"],
                         "FLOP/s", "measured", "tokens/s x MiniLM FLOPs/token (cost analysis)",
                         system="this machine"))
    for corpus in CORPORA:
      per_token = flops[corpus.avg_tokens]["flops_per_token"]
      entries.append(entry(
          "encode", "encode time", corpus.passages * corpus.avg_tokens * per_token
          / anchor["achieved_flops"], "s", "computed",
          "BERT-base FLOPs at this machine's measured MiniLM FLOP/s", system="this machine",
          corpus=corpus.name))

  # 3. ScaNN: size (computed + measured bytes per vector) and build time (extrapolated).
  sizes = (2000, 4000) if quick else tuple(scann_sizes)
  if len(sizes) < 2:
    raise ValueError("scann_sizes needs at least two sizes")
  log(f"[capacity_plan] ScaNN: building {sizes} random unit vectors of dim {DIM}")
  scann = measure.measure_scann(sizes, DIM)
  measurements["scann"] = scann
  host_cores = os.cpu_count() or 1
  small, large = scann[0], scann[-1]
  for build in scann:
    entries.append(entry("scann", "build wall time here", build["build_wall_s"], "s", "measured",
                         f"ScannIndex.build, default ScannConfig, {build['vectors']} vectors, "
                         f"{host_cores} cores", vectors=build["vectors"]))
    entries.append(entry("scann", "build CPU time here", build["build_cpu_s"], "core-s",
                         "measured", "user + system time of the build",
                         vectors=build["vectors"]))
  # Linear through the two outer points, in CPU seconds (so that it scales by cores).
  slope = (large["build_cpu_s"] - small["build_cpu_s"]) / (large["vectors"] - small["vectors"])
  intercept = large["build_cpu_s"] - slope * large["vectors"]
  for corpus in CORPORA:
    for system in SYSTEMS:
      shard = math.ceil(corpus.passages / system.scann_shards)
      leaves = round(math.sqrt(shard))
      where = dict(corpus=corpus.name, system=system.name, shard_vectors=shard)
      ah = shard * (DIM / 2) * 0.5
      soar = 2 * ah + shard * 8  # SOAR: a second (spilled) code per vector + 2 int32 leaf tokens
      reorder = shard * DIM * 4
      centroids = leaves * DIM * 4
      entries.append(entry("scann", "AH codes per shard (in memory, 4 bit / 2 dims)", ah, "bytes",
                           "computed", f"{shard} x {DIM}/2 blocks x 0.5 B", **where))
      entries.append(entry("scann", "AH codes with SOAR spill", soar, "bytes", "computed",
                           f"2 x AH codes + {shard} x 2 x 4 B leaf ids", **where))
      entries.append(entry("scann", "float32 reorder data", reorder, "bytes", "computed",
                           f"{shard} x {DIM} x 4 B (bf16: half; int8: a quarter)", **where))
      entries.append(entry("scann", "leaf centroids", centroids, "bytes", "computed",
                           f"round(sqrt({shard})) = {leaves} leaves x {DIM} x 4 B", **where))
      entries.append(entry("scann", "index per shard in memory", soar + reorder + centroids,
                           "bytes", "computed", "SOAR codes + reorder + centroids", **where))
      on_disk = shard * (large["hashed_bytes_per_vector"] + large["reorder_bytes_per_vector"])
      entries.append(entry(
          "scann", "index per shard on disk", on_disk, "bytes", "extrapolated",
          f"measured {large['hashed_bytes_per_vector']:.0f} B/vector codes (1 byte per block, "
          f"unpacked, x2 SOAR) + {large['reorder_bytes_per_vector']:.0f} B/vector reorder at "
          f"{large['vectors']} vectors, x {shard}", **where))
      # ScannIndex.build leaves ScaNN's training threads at their default (one core). Shards
      # on one host build concurrently, each on its share of vCPUs.
      cores = system.host_vcpus * system.hosts / system.scann_shards
      linear = intercept + slope * shard
      power = large["build_cpu_s"] * (shard / large["vectors"]) ** 1.5
      for model, core_s, how in (
          ("linear", linear, f"CPU-s linear through {small['vectors']} and {large['vectors']} "
           f"vectors = {linear:.3g} core-s"),
          ("N^1.5", power, f"CPU-s at {large['vectors']} x ({shard}/{large['vectors']})^1.5 "
           f"(assigning N points to sqrt(N) leaves) = {power:.3g} core-s")):
        entries.append(entry(
            "scann", f"build time per shard, {model}, 1 thread", core_s, "s", "extrapolated",
            how + ", one thread as ScannIndex.build runs today, same per-core speed", **where))
        entries.append(entry(
            "scann", f"build time per shard, {model}, all vCPUs", core_s / cores, "s",
            "extrapolated", how + f" / {cores:.0f} vCPUs per shard, perfect scaling (would "
            "need ScaNN's set_n_training_threads)", **where))

  # 4. Per-device training memory (measured by compiling) + analytic cross-check (computed).
  mem_config = measure.encoder_config(TINY, dtype=jnp.bfloat16) if quick else bert
  scale = 4 if quick else 1
  q_tokens, p_tokens = (32, 64) if quick else (setup.query_tokens, setup.passage_tokens)
  chunks = [8] if quick else [int(c) for c in chunk_sizes]
  modes = [("full", 0), ("remat", 0)] + [("grad_cache", c) for c in chunks]
  mem_params = measure.param_count(mem_config)
  if quick:  # Compiles dominate --quick's time, even for the tiny model: two programs only.
    modes = [("full", 0), ("grad_cache", chunks[0])]
  measurements["train_memory"] = []
  for system in SYSTEMS[:1] if quick else SYSTEMS:
    queries = _per_device_rows(setup, system, scale)
    passages = queries * setup.group
    for mode, chunk in modes:
      if queries % max(chunk, 1) or passages % max(chunk, 1):
        raise ValueError(f"chunk size {chunk} does not divide {queries} / {passages} rows")
      name = f"{mode} (chunk {chunk})" if chunk else mode
      log(f"[capacity_plan] memory: compiling the {system.name} per-device step, {name}, "
          f"{queries} queries + {passages} passages")
      result = measure.measure_train_memory(
          mem_config, queries=queries, group=setup.group, query_tokens=q_tokens,
          passage_tokens=p_tokens, mode=mode, chunk_size=chunk)
      result["system"] = system.name
      measurements["train_memory"].append(result)
      where = dict(system=system.name, mode=name, queries=queries, passages=passages)
      entries.append(entry(
          "memory", "per-device step memory (CPU compile)", result["peak_bytes"], "bytes",
          "measured", "memory_analysis() of the compiled train_step: argument + output - "
          "aliased + temp; XLA:CPU estimate of the accelerator program", **where))
      grads = mem_params * 2 * 4
      states = mem_params * 2 * 12
      if mode == "full":
        acts = (analytic_activation_bytes(mem_config, queries, q_tokens)
                + analytic_activation_bytes(mem_config, passages, p_tokens))
        how = "Korthikanti activations of both towers"
      elif mode == "remat":
        boundary = lambda rows, s: rows * s * mem_config.hidden_size * 2 * mem_config.num_layers
        one_block = max(analytic_activation_bytes(mem_config, queries, q_tokens),
                        analytic_activation_bytes(mem_config, passages, p_tokens))
        acts = (boundary(queries, q_tokens) + boundary(passages, p_tokens)
                + one_block / mem_config.num_layers)
        how = "bf16 block inputs of every layer + one block's activations"
      else:
        acts = analytic_activation_bytes(mem_config, chunk, p_tokens)
        how = f"one {chunk}-row passage chunk's activations"
      entries.append(entry(
          "memory", "per-device step memory (analytic)", states + grads + acts, "bytes",
          "computed", f"params + 2 Adam moments + grads (16 B x {mem_params} x 2 towers) + {how}"
          " (bf16, Korthikanti et al. 2022)", **where))
      if mode == "full":
        entries.append(entry(
            "memory", "per-device step FLOPs (CPU compile)", result["flops"], "FLOP", "measured",
            "cost analysis of the compiled full-batch train_step", **where))
        entries.append(entry(
            "memory", "step time at MFU", result["flops"] / (system.peak_flops * mfu), "s",
            "computed", f"step FLOPs / ({system.peak_flops:.3g} x {mfu}); GradCache and remat "
            "add one forward (~ x 4/3)", **where))
      if mode == "remat":
        entries.append(entry(
            "memory", "per-device step FLOPs (CPU compile)", result["flops"], "FLOP", "measured",
            "cost analysis of the compiled remat train_step (the recomputed forward included)",
            **where))

  # 5. Params + optimizer state per device (computed), replicated over the data axis.
  state = tower_params * 4 * 3 * 2
  for system in SYSTEMS:
    entries.append(entry("state", "params + AdamW moments per device", state, "bytes",
                         "computed", f"{tower_params} params x 4 B x 3 (params, m, v) x 2 towers;"
                         " replicated over the data axis", system=system.name))
    entries.append(entry("state", "gradients per device", tower_params * 4 * 2, "bytes",
                         "computed", f"{tower_params} x 4 B x 2 towers (transient, in the step)",
                         system=system.name))

  # 6. The paper recipes' per-device steps (measured) and 7. ANCE's refresh cycle (computed).
  shapes = {"BERT-base": TINY if quick else BERT_BASE,
            "RoBERTa-base": TINY if quick else capacity_recipes.ROBERTA_BASE}
  entries += capacity_recipes.recipe_entries(entry, SYSTEMS, measure, shapes, mfu=mfu,
                                             quick=quick, log=log)
  tpu = SYSTEMS[0]
  marco = CORPORA[1]
  refresh, refresh_notes = capacity_recipes.refresh_entries(
      entry, tpu, step_flops_per_device=_pick(
          {"entries": entries}, "recipes", "step FLOPs per device", recipe="ANCE",
          system=tpu.name)["value"],
      flops_per_token=flops[marco.avg_tokens]["flops_per_token"],
      build_s=_pick({"entries": entries}, "scann", "build time per shard, linear, all vCPUs",
                    corpus=marco.name, system=tpu.name)["value"], mfu=mfu)
  entries += refresh

  assumptions = dict(
      mfu=mfu, model="BERT-base (12 layers, hidden 768, 12 heads, MLP 3072, vocab 30522), [CLS]"
      " pooling, two towers (DPR)", tower_params=tower_params, embedding_dim=DIM,
      compute_dtype="bfloat16 activations, float32 params and AdamW moments",
      train_setup=dataclasses.asdict(setup),
      train_setup_note="global batch 4,096 queries, each with its positive and 1 hard negative "
      "(8,192 passages); query length 64 (DPR's questions fit; 32 would also do), passage "
      "length 256; rows split evenly over the chips (data parallel, params replicated); the "
      "cross-device all-gather of passage embeddings for the global in-batch softmax "
      "(8,192 x 768 x 4 B = 25 MB) and the local logits (<= 512 x 8,192 x 4 B = 17 MB) are not "
      "in the single-device compile",
      systems=[dataclasses.asdict(s) for s in SYSTEMS],
      corpora=[dataclasses.asdict(c) for c in CORPORA],
      scann="default ScannConfig: num_leaves = round(sqrt(N)), anisotropic hashing with 2-dim "
      "blocks x 16 centres (4 bits per 2 dims), SOAR spilling (lambda 1.5), float32 reorder; "
      "build time scaled from this machine's cores to the host vCPUs assuming perfect scaling "
      "and equal per-core speed (optimistic); random vectors, not real embeddings",
      encode="length-bucketed encoding: FLOPs/token measured at the corpus's average length; "
      "'all padded to max' is the no-bucketing upper bound",
      memory="XLA:CPU compile of one device's program (no collectives): upcasts bf16 work, "
      "keeps softmax and dropout intermediates unfused, so it over-estimates XLA:TPU/GPU, and its "
      "scheduler does not turn remat's recomputation into a lower peak; the analytic row counts "
      "bf16 activations with byte dropout masks, no flash attention",
      quick=quick, memory_model="tiny 2-layer (quick)" if quick else "BERT-base",
      recipes=[dataclasses.asdict(r) for r in capacity_recipes.RECIPES],
      refresh=dataclasses.asdict(capacity_recipes.RefreshSetup()), refresh_notes=refresh_notes,
      hbm_bandwidth=capacity_recipes.HBM_BANDWIDTH)
  return dict(
      entries=entries, measurements=measurements, assumptions=assumptions,
      elapsed_s=time.perf_counter() - started, loadavg_start=load_start,
      loadavg_end=os.getloadavg()[0], jax_version=jax.__version__,
      platform=jax.default_backend(), cpu_count=os.cpu_count(),
      cpu=platform.processor() or platform.machine(), command=" ".join(sys.argv))


# --- printing -------------------------------------------------------------------------------------


def _entries_of(plan: dict[str, Any], section: str, quantity: str, **where: Any
                ) -> list[dict[str, Any]]:
  """The plan's entries of a section and quantity, filtered by `where`."""
  return [e for e in plan["entries"] if e["section"] == section and e["quantity"] == quantity
          and all(e.get(k) == v for k, v in where.items())]


def _pick(plan: dict[str, Any], section: str, quantity: str, **where: Any) -> dict[str, Any]:
  """The one entry `_entries_of` matches; KeyError if there is not exactly one."""
  matches = _entries_of(plan, section, quantity, **where)
  if len(matches) != 1:
    raise KeyError(f"{len(matches)} entries for {section}/{quantity}/{where}")
  return matches[0]


def format_plan(plan: dict[str, Any]) -> str:
  """The plan as markdown tables; (m) measured, (c) computed, (x) extrapolated."""
  tag = {"measured": "m", "computed": "c", "extrapolated": "x"}
  a = plan["assumptions"]

  def cell(e, fmt):
    return f"{fmt(e['value'])} ({tag[e['label']]})"

  def span(low, high):
    return f"{_fmt_s(low['value'])} - {_fmt_s(high['value'])} ({tag[low['label']]})"

  out = [f"Capacity plan: {a['model']}; MFU {a['mfu']:.0%}. (m) measured here, (c) computed, "
         f"(x) extrapolated from measured points." + (" QUICK MODE: tiny sizes." if a["quick"]
                                                      else "")]
  systems = [s["name"] for s in a["systems"]]
  corpora = [c["name"] for c in a["corpora"]]

  out.append("\n**1. Embedding storage (768-d)**\n")
  rows = []
  for corpus in corpora:
    for dtype in ("float32", "bfloat16/float16"):
      row = [corpus, dtype, cell(_pick(plan, "storage", "embeddings, whole corpus",
                                       corpus=corpus, dtype=dtype), _fmt_bytes)]
      for system in systems:
        for unit in ("host", "device"):
          row.append(cell(_pick(plan, "storage", f"embeddings per {unit}", corpus=corpus,
                                dtype=dtype, system=system), _fmt_bytes))
      rows.append(row)
  header = ["corpus", "dtype", "total"] + [f"{s} per {u}" for s in systems
                                           for u in ("host", "device")]
  out.append(_table(header, rows))

  out.append("\n**2. Encoding the corpus (BERT-base forward)**\n")
  rows = []
  for e in plan["entries"]:
    if e["section"] == "flops" and e["quantity"] == "forward FLOPs per token":
      analytic = _pick(plan, "flops", "forward FLOPs per token, analytic", length=e["length"])
      rows.append([e["length"], cell(e, lambda v: f"{v / 1e6:.1f} M"),
                   cell(analytic, lambda v: f"{v / 1e6:.1f} M"),
                   f"{e['value'] / analytic['value']:.3f}"])
  out.append(_table(["tokens", "FLOPs/token", "analytic", "ratio"], rows))
  out.append("")
  rows = []
  for corpus in corpora:
    for system in systems:
      rows.append([corpus, system,
                   cell(_pick(plan, "encode", "encode time", corpus=corpus, system=system),
                        _fmt_s),
                   cell(_pick(plan, "encode", "encode time, all padded to max", corpus=corpus,
                              system=system), _fmt_s)])
    anchor = [e for e in plan["entries"] if e["section"] == "encode" and e.get("corpus") == corpus
              and e.get("system") == "this machine"]
    if anchor:
      rows.append([corpus, "this machine (CPU)", cell(anchor[0], _fmt_s), ""])
  out.append(_table(["corpus", "system", "encode time (avg length)", "all padded to 256"], rows))
  if "cpu_anchor" in plan["measurements"]:
    anchor = plan["measurements"]["cpu_anchor"]
    out.append(f"\nCPU anchor (m): {anchor['model']} {anchor['texts_per_s']:.0f} texts/s = "
               f"{anchor['tokens_per_s']:.0f} tokens/s = {anchor['achieved_flops'] / 1e9:.1f} "
               f"GFLOP/s on {anchor['cpu_count']} cores ({anchor['texts']} x {anchor['length']}"
               f" tokens, batch {anchor['batch_size']}).")

  out.append("\n**3. ScaNN index per shard (AH 2-dim blocks x 16 centres, SOAR, float32 "
             "reorder)**\n")
  builds = plan["measurements"]["scann"]
  exponent = math.log(builds[-1]["build_cpu_s"] / builds[0]["build_cpu_s"]) / math.log(
      builds[-1]["vectors"] / builds[0]["vectors"])
  out.append("Measured here: " + "; ".join(
      f"{b['vectors']:,} vectors {b['build_wall_s']:.1f} s wall / {b['build_cpu_s']:.1f} "
      f"core-s, {b['disk_bytes'] / 1e6:.0f} MB on disk ({b['hashed_bytes_per_vector']:.0f} "
      f"B/vector codes, {b['reorder_bytes_per_vector']:.0f} B/vector reorder)" for b in builds)
      + f" ({plan['cpu_count']} cores; build time ~ N^{exponent:.2f} between the two). "
      "Shards: TPU one per host (4), H100 8 on the one host.\n")
  rows = []
  for corpus in corpora:
    for system in systems:
      pick = functools.partial(_pick, plan, "scann", corpus=corpus, system=system)
      shard = pick("AH codes per shard (in memory, 4 bit / 2 dims)")
      rows.append([corpus, system, f"{shard['shard_vectors']:,}", cell(shard, _fmt_bytes),
                   cell(pick("AH codes with SOAR spill"), _fmt_bytes),
                   cell(pick("float32 reorder data"), _fmt_bytes),
                   cell(pick("leaf centroids"), _fmt_bytes),
                   cell(pick("index per shard in memory"), _fmt_bytes),
                   cell(pick("index per shard on disk"), _fmt_bytes),
                   span(pick("build time per shard, linear, 1 thread"),
                        pick("build time per shard, N^1.5, 1 thread")),
                   span(pick("build time per shard, linear, all vCPUs"),
                        pick("build time per shard, N^1.5, all vCPUs"))])
  out.append(_table(["corpus", "system", "vectors/shard", "AH codes", "+SOAR", "reorder f32",
                     "centroids", "in memory", "on disk", "build, 1 thread (linear - N^1.5)",
                     "build, all vCPUs (linear - N^1.5)"],
                    rows))

  out.append("\n**4. Per-device training memory, global batch 4,096 queries + 8,192 passages "
             f"({a['memory_model']})**\n")
  rows = []
  for system in a["systems"]:
    hbm = system["hbm_bytes"]
    for e in plan["entries"]:
      if e["section"] == "memory" and e["quantity"] == "per-device step memory (CPU compile)" \
          and e["system"] == system["name"]:
        analytic = _pick(plan, "memory", "per-device step memory (analytic)",
                         system=system["name"], mode=e["mode"])
        fits = lambda v: "yes" if v <= hbm else "no"
        rows.append([system["name"], f"{e['queries']} + {e['passages']}", e["mode"],
                     cell(e, _fmt_gib), cell(analytic, _fmt_gib),
                     f"{fits(e['value'])} / {fits(analytic['value'])} ({hbm / GIB:.1f} GiB)"])
  out.append(_table(["system", "rows/device (q + p)", "mode", "CPU compile", "analytic",
                     "fits HBM? (compile / analytic)"], rows))
  out.append(
      "\nCPU compile: XLA:CPU's program for one device (no collectives); it upcasts bf16 work "
      "and keeps softmax and dropout intermediates unfused, so it over-estimates the TPU/GPU "
      "program (~3x the analytic count here). With remat the CPU program does recompute each "
      "block (step FLOPs below) but XLA:CPU schedules the recomputations without lowering the "
      "peak, so its remat row shows almost no saving; the analytic column (bf16 activations, "
      "byte dropout masks, no flash attention; Korthikanti et al. 2022) is the accelerator "
      "estimate there, unverified here.\n")
  rows = []
  for system in systems:
    flops = {e["mode"]: e for e in _entries_of(
        plan, "memory", "per-device step FLOPs (CPU compile)", system=system)}
    if "full" in flops:
      timed = _pick(plan, "memory", "step time at MFU", system=system, mode="full")
      rows.append([system, cell(flops["full"], lambda v: f"{v:.3g}"),
                   cell(flops["remat"], lambda v: f"{v:.3g}") if "remat" in flops else "",
                   cell(timed, _fmt_s)])
  out.append(_table(["system", "full-batch step FLOPs per device", "remat step FLOPs",
                     "full-batch step time at MFU"], rows))

  out.append("\n**5. Params + optimizer state per device (replicated over data)**\n")
  rows = [[s, cell(_pick(plan, "state", "params + AdamW moments per device", system=s),
                   lambda v: f"{v / GIB:.2f} GiB"),
           cell(_pick(plan, "state", "gradients per device", system=s),
                lambda v: f"{v / GIB:.2f} GiB")] for s in systems]
  out.append(_table(["system", "params + m + v (2 towers, f32)", "gradients (transient)"], rows))
  out += capacity_recipes.format_sections(plan, cell, _fmt_s, _fmt_gib)
  out.append(f"\nBERT-base tower: {a['tower_params']:,} parameters. Measured in "
             f"{plan['elapsed_s']:.0f} s on {plan['cpu_count']} {plan['platform']} cores "
             f"(load {plan['loadavg_start']:.1f} -> {plan['loadavg_end']:.1f}), JAX "
             f"{plan['jax_version']}.")
  return "\n".join(out)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  """Builds the plan from the (parsed) flags, prints it and optionally writes the JSON."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  fv = flag_values
  plan = build_plan(quick=fv.quick, mfu=fv.mfu,
                    chunk_sizes=[int(c) for c in fv.chunk_sizes],
                    scann_sizes=[int(s) for s in fv.scann_sizes], cpu_anchor=fv.cpu_anchor,
                    log=lambda msg: print(msg, file=sys.stderr, flush=True))
  print(format_plan(plan))
  if fv.out:
    out = pathlib.Path(fv.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
