"""Where the time goes: per-op profiles of our training step and encoder against PyTorch's.

`eval/bench_train.py` and `eval/bench_encode.py` say how fast each side is; this script says why.
It runs the same work on both sides under their own profilers and sums each op's time into the
same categories:

  ours: `jax.profiler` traces XLA:CPU's thunks (one event per fusion, dot, copy, ...); each
    thunk is mapped to its HLO instruction in the compiled module and, through the
    instruction's stack frame, to the line of our model code it came from (`Attention`'s
    LayerNorm call, `FeedForward`'s dense, the optimizer's update, ...).
  reference: `torch.profiler` self CPU time of every ATen op (`aten::addmm`,
    `aten::native_layer_norm_backward`, `aten::_softmax`, ...).

Categories: matmul (projections and the feed-forward, with what XLA fused into them),
attention (scores, softmax, context), LayerNorm, GELU, dropout (its random bits and masks),
layout (transposes and copies), optimizer (AdamW, clipping), other (embeddings, pooling, loss,
residual adds). Each line of our costliest ones is a fusion's root: read it with the fusion's
contents in mind (the JSON lists each thunk's fused opcodes). Times are per step (train)
or per batch (encode); thunks that run concurrently both count, as do PyTorch's ops, so a
side's total can exceed its wall time a little.

  train: bench_train's step (MiniLM, batch 16 with one hard negative, caps 64/128, dropout on,
    AdamW + clipping) on the same SciFact texts; ours is the jitted `train_step`, theirs MNRL +
    backward + `clip_grad_norm_` + AdamW.
  encode: the forward pass alone on the same padded token ids ([batch, max_length], the first
    SciFact documents, or synthetic ones without SciFact), ours the jitted `TextEncoder` as
    `encode.encode_texts` runs it, theirs the sentence-transformers module under
    `torch.inference_mode()`.

Usage:
  python eval/profile_ops.py --what=train,encode --out=/tmp/profile_ops.json
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python eval/profile_ops.py --what=encode
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import linecache
import os
import re
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags
import numpy as np

from eval import bench_harness
from retrieval_jax import host_malloc

FLAGS = flags.FLAGS

CATEGORIES = ("matmul", "attention", "LayerNorm", "GELU", "dropout", "layout", "optimizer",
              "other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_STACK_FRAME = re.compile(r"stack_frame_id=(\d+)")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags on `flag_values` (not at import: tests import this beside other CLIs)."""
  flags.DEFINE_list("what", ["train", "encode"], "Which profiles: train, encode.",
                    flag_values=flag_values)
  flags.DEFINE_string("out", None, "Write the results as JSON to this file.",
                      flag_values=flag_values)
  flags.DEFINE_string("model", "minilm", "sentence-transformers directory or `minilm`.",
                      flag_values=flag_values)
  flags.DEFINE_integer("steps", 3, "Profiled steps (train) or batches (encode) per side.",
                       flag_values=flag_values)
  flags.DEFINE_integer("train_batch_size", 16, "Queries per training step.",
                       flag_values=flag_values)
  flags.DEFINE_integer("encode_batch_size", 32, "Documents per encoded batch.",
                       flag_values=flag_values)
  flags.DEFINE_integer("encode_max_length", 256, "Document token cap (and padded length).",
                       flag_values=flag_values)
  flags.DEFINE_integer("top", 12, "Also list this many of our costliest source lines.",
                       flag_values=flag_values)
  host_malloc.define_flag(flag_values)


# --- our side: HLO instructions, their source lines, and trace events -----------------------


@dataclasses.dataclass(frozen=True)
class HloOp:
  """One HLO instruction of a compiled module, as far as profiling needs it.

  Attributes:
    opcode: `fusion`, `dot`, `copy`, `transpose`, `custom-call`, ...
    fused_opcodes: For fusions, the opcodes inside the fused computation (recursively).
    frames: The instruction's stack, innermost first, as (file, line, function).
  """
  opcode: str
  fused_opcodes: frozenset[str]
  frames: tuple[tuple[str, int, str], ...]


def _tables(text: str) -> tuple[dict[int, str], dict[int, str], dict[int, tuple], dict[int, tuple]]:
  """The FileNames, FunctionNames, FileLocations and StackFrames tables of `as_text()`."""
  tables: dict[str, dict[int, Any]] = collections.defaultdict(dict)
  section = None
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    if section is None or not line.strip():
      continue
    key, _, rest = line.partition(" ")
    if not key.isdigit():
      section = None
      continue
    if section in ("FileNames", "FunctionNames"):
      tables[section][int(key)] = rest.strip('"')
    elif section == "FileLocations":
      fields = dict(re.findall(r"(\w+)=(\d+)", rest))
      tables[section][int(key)] = (int(fields["file_name_id"]), int(fields["function_name_id"]),
                                   int(fields["line"]))
    else:
      # The text prints a frame's parent as its id + 1 (0 + 1 for the outermost frame).
      fields = dict(re.findall(r"(\w+)=(\d+)", rest))
      tables[section][int(key)] = (int(fields["file_location_id"]),
                                   int(fields.get("parent_frame_id", 1)) - 1)
  return (tables["FileNames"], tables["FunctionNames"], tables["FileLocations"],
          tables["StackFrames"])


def parse_hlo(text: str) -> dict[str, HloOp]:
  """Instruction name -> `HloOp` for every instruction of a compiled module's `as_text()`."""
  files, functions, locations, stack = _tables(text)

  def frames(frame_id: int) -> tuple[tuple[str, int, str], ...]:
    out, seen = [], set()
    while frame_id and frame_id in stack and frame_id not in seen:
      seen.add(frame_id)
      location, frame_id = stack[frame_id]
      file_id, function_id, line = locations.get(location, (0, 0, 0))
      out.append((files.get(file_id, "?"), line, functions.get(function_id, "?")))
    return tuple(out)

  raw: dict[str, tuple[str, str | None, int]] = {}
  computation_ops: dict[str, list[str]] = collections.defaultdict(list)
  computation = None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header and line.rstrip().endswith("{"):
      computation = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, opcode = match.groups()
    calls = _CALLS.search(line)
    frame = _STACK_FRAME.search(line)
    raw[name] = (opcode, calls.group(1) if calls else None, int(frame.group(1)) if frame else 0)
    if computation:
      computation_ops[computation].append(name)

  def opcodes_in(computation_name: str, depth: int = 0) -> set[str]:
    found = set()
    for op_name in computation_ops.get(computation_name, ()):
      opcode, calls, _ = raw[op_name]
      found.add(opcode)
      if calls and depth < 4:
        found |= opcodes_in(calls, depth + 1)
    return found

  return {name: HloOp(opcode, frozenset(opcodes_in(calls) if calls else ()), frames(frame))
          for name, (opcode, calls, frame) in raw.items()}


def _source(frame: tuple[str, int, str]) -> str:
  file, line, _ = frame
  return linecache.getline(file, line).strip() if line else ""


def categorize_ours(op: HloOp, name: str = "") -> str:
  """The category of one of our HLO instructions (see the module docstring).

  XLA fuses elementwise work into the matmuls (YNNPACK fusions can hold a block's output
  projection, residual, LayerNorm, both feed-forward matmuls and GELU): a fusion holding a
  dot counts as matmul, or as attention when it is the scores/context product.
  """
  kinds = {op.opcode} | op.fused_opcodes
  if op.opcode in ("transpose", "copy") or (op.opcode == "fusion" and kinds <= {
      "fusion", "transpose", "copy", "bitcast", "parameter", "reshape", "broadcast"}):
    return "layout"
  functions = [function for _, _, function in op.frames]
  if any(f.startswith(("apply_gradients", "make_schedule")) for f in functions):
    return "optimizer"
  innermost = op.frames[0] if op.frames else ("", 0, "")
  source = _source(innermost)
  in_attention = innermost[2] == "Attention.__call__" and not source.startswith("out")
  if kinds & {"dot", "convolution"} or name.startswith(("ynn_fusion", "onednn")):
    return "attention" if in_attention else "matmul"
  if "Dropout" in source:
    return "dropout"
  if "_layer_norm" in source or "LayerNorm" in source:
    return "LayerNorm"
  if innermost[2] == "gelu" or "gelu(" in source:
    return "GELU"
  return "attention" if in_attention else "other"


def trace_events(trace_dir: str) -> list[tuple[str, str, float]]:
  """(module, HLO instruction, seconds) of every XLA thunk in a `jax.profiler` trace."""
  from jax._src.lib import _profile_data  # pylint: disable=g-import-not-at-top

  events = []
  for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
    for plane in _profile_data.ProfileData.from_file(path).planes:
      for line in plane.lines:
        for event in line.events:
          stats = dict(event.stats)
          if "hlo_op" in stats and not event.name.startswith("end: "):
            events.append((str(stats.get("hlo_module", "")), str(stats["hlo_op"]),
                           event.duration_ns * 1e-9))
  return events


def profile_ours(fn: Callable[[], Any], hlo: Mapping[str, HloOp], module: str, repeats: int,
                 top: int) -> dict[str, Any]:
  """Runs `fn` (warmed up) `repeats` times under `jax.profiler` and sums its thunks.

  Returns categories (seconds per call), the costliest source lines, and wall seconds per call.
  """
  import jax  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(repeats):
        jax.block_until_ready(fn())
    wall = (time.perf_counter() - start) / repeats
    events = trace_events(trace_dir)
  categories = dict.fromkeys(CATEGORIES, 0.0)
  lines: dict[str, float] = collections.defaultdict(float)
  opcodes: dict[str, float] = collections.defaultdict(float)
  thunks: dict[str, float] = collections.defaultdict(float)
  unmatched = 0.0
  for event_module, name, seconds in events:
    if not event_module.startswith(module):
      continue
    op = hlo.get(name)
    if op is None:
      unmatched += seconds
      continue
    categories[categorize_ours(op, name)] += seconds / repeats
    frame = op.frames[0] if op.frames else ("?", 0, "?")
    where = f"{os.path.basename(frame[0])}:{frame[1]} {frame[2]}: {_source(frame)[:60]}"
    lines[where] += seconds / repeats
    thunks[name] += seconds / repeats
    opcodes["ynn dot" if name.startswith("ynn_fusion") else op.opcode] += seconds / repeats
  costly = sorted(lines.items(), key=lambda item: -item[1])[:top]
  # The costliest thunks with what they fuse, since a fusion's root line hides its matmuls.
  top_thunks = [{"name": name, "s": seconds, "category": categorize_ours(hlo[name], name),
                 "fused": sorted(hlo[name].fused_opcodes - {"parameter", "constant", "bitcast"})}
                for name, seconds in sorted(thunks.items(), key=lambda item: -item[1])[:top]]
  return {"wall_s": wall, "categories_s": categories, "ops_total_s": sum(categories.values()),
          "unmatched_s": unmatched / repeats, "by_opcode_s": dict(opcodes),
          "top_lines_s": costly, "top_thunks": top_thunks}


# --- the reference: torch.profiler ------------------------------------------------------------

# (category, substrings of the op name, exact op names), first match wins.
_TORCH_RULES = (
    ("optimizer", ("_foreach", "adamw", "clip_grad", "lerp", "addcdiv", "addcmul",
                   "linalg_vector_norm"), ("aten::norm",)),
    ("dropout", ("dropout", "bernoulli"), ()),
    ("LayerNorm", ("layer_norm",), ()),
    ("GELU", ("gelu",), ()),
    ("attention", ("softmax", "bmm", "scaled_dot_product", "flash_attention"), ()),
    ("matmul", (), ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul")),
    ("layout", ("copy_", "contiguous", "clone", "transpose", "permute"), ("aten::t",)),
)


def categorize_torch(name: str) -> str:
  """The category of one ATen op (by name)."""
  lowered = name.lower()
  for category, substrings, names in _TORCH_RULES:
    if lowered in names or any(key in lowered for key in substrings):
      return category
  return "other"


def profile_torch(fn: Callable[[], Any], repeats: int, top: int) -> dict[str, Any]:
  """Runs `fn` (warmed up) `repeats` times under `torch.profiler`; self CPU time by category."""
  import torch  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(repeats):
      fn()
  wall = (time.perf_counter() - start) / repeats
  categories = dict.fromkeys(CATEGORIES, 0.0)
  ops = []
  for event in prof.key_averages():
    seconds = event.self_cpu_time_total * 1e-6 / repeats
    if seconds <= 0 or not event.key.startswith("aten::"):
      continue
    categories[categorize_torch(event.key)] += seconds
    ops.append((event.key, seconds))
  ops.sort(key=lambda item: -item[1])
  return {"wall_s": wall, "categories_s": categories, "ops_total_s": sum(categories.values()),
          "top_ops_s": ops[:top]}


# --- the two workloads ------------------------------------------------------------------------


def train_profiles(model: str, batch_size: int, steps: int, top: int) -> dict[str, Any]:
  """Both sides' training step, as `eval/bench_train.py` times it."""
  from eval import bench_train  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import tokenize as tok  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import dual_encoder  # pylint: disable=g-import-not-at-top

  spec = dual_encoder.model_spec(bench_train._model_config(model))  # pylint: disable=protected-access
  split, _ = bench_train.load_split(None)
  batcher, texts_of = bench_train.make_batcher(
      split, tok.load_tokenizer(spec.tokenizer_dir), batch_size=batch_size,
      query_max_length=64, passage_max_length=128, seed=0)
  ours = bench_train._Ours(spec, batcher, seed=0)  # pylint: disable=protected-access
  # One padded shape for every profiled step: the first batch, repeated.
  device_batch = ours._device_batch(batcher.batch(0))  # pylint: disable=protected-access
  compiled = ours._step.lower(ours.state, {}, device_batch).compile()  # pylint: disable=protected-access
  hlo = parse_hlo(compiled.as_text())

  def our_step():
    ours.state, metrics = ours._step(ours.state, {}, ours._device_batch(batcher.batch(0)))  # pylint: disable=protected-access
    return metrics

  for _ in range(2):
    our_step()
  result = {"ours": profile_ours(our_step, hlo, "jit_train_step", steps, top)}
  reference = bench_train._Reference(spec.model_dir, 64, 128, seed=0)  # pylint: disable=protected-access
  texts = texts_of(0, batcher.batch(0)["example_index"])
  for _ in range(2):
    reference.train(texts)
  result["reference"] = profile_torch(lambda: reference.train(texts), steps, top)
  return result


def encode_profiles(model: str, batch_size: int, max_length: int, steps: int,
                    top: int) -> dict[str, Any]:
  """Both sides' encoder forward on the same [batch, max_length] token ids."""
  import jax  # pylint: disable=g-import-not-at-top
  import sentence_transformers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from eval import bench_train  # pylint: disable=g-import-not-at-top
  from retrieval_jax import encode  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import tokenize as tok  # pylint: disable=g-import-not-at-top

  encoder = encode.load_encoder(model)
  texts = bench_train.load_split(None)[0].doc_strings()[:batch_size]
  ids = tok.tokenize(encoder.tokenizer, texts, max_length)
  input_ids = np.full((batch_size, max_length), encoder.config.pad_token_id, np.int32)
  mask = np.zeros((batch_size, max_length), np.int32)
  for row, row_ids in enumerate(ids):
    input_ids[row, :len(row_ids)] = row_ids
    mask[row, :len(row_ids)] = 1
  mesh = encode.data_mesh()
  forward, replicated, rows = encode._make_forward(encoder.model, mesh)  # pylint: disable=protected-access
  params = jax.device_put(encoder.params, replicated)
  device_ids, device_mask = jax.device_put(input_ids, rows), jax.device_put(mask, rows)
  hlo = parse_hlo(forward.lower(params, device_ids, device_mask).compile().as_text())

  def ours():
    return forward(params, device_ids, device_mask)

  ours()
  result = {"ours": profile_ours(ours, hlo, "jit_forward", steps, top),
            "real_tokens": int(mask.sum()), "shape": [batch_size, max_length]}
  st_model = sentence_transformers.SentenceTransformer(str(encoder.model_dir), device="cpu")
  st_model.eval()
  features = {"input_ids": torch.from_numpy(input_ids.astype(np.int64)),
              "attention_mask": torch.from_numpy(mask.astype(np.int64)),
              "token_type_ids": torch.zeros(input_ids.shape, dtype=torch.int64)}

  def theirs():
    with torch.inference_mode():
      return st_model(dict(features))["sentence_embedding"]

  theirs()
  result["reference"] = profile_torch(theirs, steps, top)
  return result


def format_table(name: str, result: Mapping[str, Any]) -> str:
  """Category seconds of both sides, their ratio, and our costliest lines."""
  ours, ref = result["ours"], result["reference"]
  lines = [f"{name}: ms per call   ours | PyTorch | ours/PyTorch",
           f"  {'wall':<10} {1e3 * ours['wall_s']:9.1f} | {1e3 * ref['wall_s']:8.1f} | "
           f"{ours['wall_s'] / ref['wall_s']:.2f}"]
  for category in CATEGORIES + ("ops total",):
    key = "ops_total_s" if category == "ops total" else None
    a = ours[key] if key else ours["categories_s"][category]
    b = ref[key] if key else ref["categories_s"][category]
    ratio = f"{a / b:.2f}" if b > 0 else "-"
    lines.append(f"  {category:<10} {1e3 * a:9.1f} | {1e3 * b:8.1f} | {ratio}")
  lines.append("  our costliest source lines (ms per call):")
  lines += [f"    {1e3 * seconds:8.1f}  {where}" for where, seconds in ours["top_lines_s"]]
  lines.append("  PyTorch's costliest ops (ms per call):")
  lines += [f"    {1e3 * seconds:8.1f}  {op}" for op, seconds in ref["top_ops_s"]]
  return "\n".join(lines)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  unknown = set(flag_values.what) - {"train", "encode"}
  if unknown or not flag_values.what:
    raise app.UsageError(f"--what={','.join(flag_values.what)}: use train and/or encode")
  if min(flag_values.steps, flag_values.train_batch_size, flag_values.encode_batch_size) < 1:
    raise app.UsageError("--steps and the batch sizes must be >= 1")
  host_malloc.ensure_or_exit(flag_values.malloc, may_reexec=__name__ == "__main__")
  import torch  # pylint: disable=g-import-not-at-top

  results: dict[str, Any] = {"environment": bench_harness.environment(),
                             "torch_threads": torch.get_num_threads(),
                             "loadavg_start": bench_harness.load()}
  print(bench_harness.cpu_line(results["environment"]["cpu"]))
  if "train" in flag_values.what:
    results["train"] = train_profiles(flag_values.model, flag_values.train_batch_size,
                                      flag_values.steps, flag_values.top)
    print(format_table("train step", results["train"]))
  if "encode" in flag_values.what:
    results["encode"] = encode_profiles(flag_values.model, flag_values.encode_batch_size,
                                        flag_values.encode_max_length, flag_values.steps,
                                        flag_values.top)
    print(format_table("encode batch", results["encode"]))
  results["loadavg_end"] = bench_harness.load()
  bench_harness.write_json(results, flag_values.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
