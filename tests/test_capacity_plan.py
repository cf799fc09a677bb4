"""Tests of eval/capacity_plan.py (and its eval/capacity_measure.py): `main --quick` writes a
consistent, fully labelled plan."""

import json
import math
import pathlib
import sys

from absl import app
from absl import flags
import pytest

# `pytest` (unlike `python -m pytest`) does not put the repository root on sys.path, and `eval/`
# is not part of the installed package.
_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from eval import capacity_measure as cm
from eval import capacity_plan as cp
from eval import capacity_recipes
# pylint: enable=g-import-not-at-top,wrong-import-position

# BERT-base: 12 x (4 x 768^2 + 2 x 768 x 3072) matmul weights per tower.
_BERT_MATMUL_PARAMS = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
_BERT_PARAMS = 109_482_240  # bert-base-uncased with its pooler


def _run_main(argv):
  """Parses `argv` into a private FlagValues (`--out` clashes with other CLIs' global flags)."""
  flag_values = flags.FlagValues()
  cp.define_flags(flag_values)
  flag_values(argv)
  cp.main(argv[:1], flag_values)


# The --quick plan compiles train steps and builds ScaNN indexes (minutes on 2 cores): the
# tests that read it are end-to-end runs of the script, `slow`.
_WITH_PLAN = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_plan(tmp_path_factory):
  """The --quick plan (two small train-step compiles dominate its time), its JSON and stdout."""
  out = tmp_path_factory.mktemp("plan") / "nested" / "plan.json"
  capture = pytest.MonkeyPatch()
  printed = []
  capture.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a)))
                  if k.get("file") is None else None)
  try:
    _run_main(["capacity_plan", "--quick", f"--out={out}"])
  finally:
    capture.undo()
  return json.loads(out.read_text()), "\n".join(printed)


def _entries(plan, section, quantity=None, **where):
  return [e for e in plan["entries"] if e["section"] == section
          and (quantity is None or e["quantity"] == quantity)
          and all(e.get(k) == v for k, v in where.items())]


@_WITH_PLAN
def test_every_number_is_labelled_and_finite(quick_plan):
  plan, _ = quick_plan
  assert {e["section"] for e in plan["entries"]} == {"storage", "flops", "encode", "scann",
                                                      "memory", "state", "recipes", "refresh"}
  for e in plan["entries"]:
    assert e["label"] in cp.LABELS, e
    assert math.isfinite(e["value"]) and e["value"] > 0, e
    assert e["unit"] and e["how"], e
  assert plan["assumptions"]["quick"] is True and plan["assumptions"]["mfu"] == 0.4
  assert {s["name"] for s in plan["assumptions"]["systems"]} == {s.name for s in cp.SYSTEMS}


@_WITH_PLAN
def test_printed_tables(quick_plan):
  plan, printed = quick_plan
  for heading in ("1. Embedding storage", "2. Encoding", "3. ScaNN", "4. Per-device training",
                  "5. Params + optimizer state", "6. Paper recipes", "7. ANCE's refresh",
                  "QUICK MODE", "Not possible: set aside 4 (1 per host): batch 64"):
    assert heading in printed
  assert printed.count("(m)") >= 5 and "(c)" in printed and "(x)" in printed
  assert printed == cp.format_plan(plan) + "\n" + printed.splitlines()[-1]  # + "wrote ..."


@_WITH_PLAN
def test_storage_is_n_times_768_times_bytes(quick_plan):
  plan, _ = quick_plan
  for corpus in cp.CORPORA:
    for dtype, itemsize in (("float32", 4), ("bfloat16/float16", 2)):
      (total,) = _entries(plan, "storage", "embeddings, whole corpus", corpus=corpus.name,
                          dtype=dtype)
      assert total["value"] == corpus.passages * 768 * itemsize
      assert total["label"] == "computed"
      for system in cp.SYSTEMS:
        (host,) = _entries(plan, "storage", "embeddings per host", corpus=corpus.name,
                           dtype=dtype, system=system.name)
        assert host["value"] == -(-corpus.passages // system.hosts) * 768 * itemsize
  (dpr,) = _entries(plan, "storage", "embeddings, whole corpus", corpus="DPR Wikipedia",
                    dtype="float32")
  assert dpr["value"] == 21_015_324 * 768 * 4 == 64_559_075_328


@_WITH_PLAN
def test_measured_flops_match_the_analytic_formula(quick_plan):
  plan, _ = quick_plan
  measured = _entries(plan, "flops", "forward FLOPs per token")
  assert {e["length"] for e in measured} == {80, 128, 256}
  for e in measured:
    assert e["label"] == "measured"
    (analytic,) = _entries(plan, "flops", "forward FLOPs per token, analytic", length=e["length"])
    assert e["value"] == pytest.approx(analytic["value"], rel=0.25)
    # XLA also counts softmax, GELU and LayerNorm: a little above the matmul count, never below.
    assert analytic["value"] <= e["value"] <= 1.05 * analytic["value"]
  by_length = {e["length"]: e["value"] for e in measured}
  assert by_length[80] < by_length[128] < by_length[256]  # attention grows with length


def test_analytic_formulas():
  bert = cm.encoder_config(cp.BERT_BASE)
  assert cm.param_count(bert) == _BERT_PARAMS
  assert cp.analytic_flops_per_token(bert, 128) == pytest.approx(
      2 * _BERT_MATMUL_PARAMS + 4 * 128 * 768 * 12 + 2 * 768 ** 2 / 128)
  # Korthikanti et al.: s*h*(34 + 5*a*s/h) bytes per layer and sequence.
  assert cp.analytic_activation_bytes(bert, 2, 256) == 2 * 12 * 256 * 768 * (34 + 5 * 12 * 256
                                                                             / 768)


@_WITH_PLAN
def test_encode_time_follows_from_the_measured_flops(quick_plan):
  plan, _ = quick_plan
  for corpus in cp.CORPORA:
    (per_token,) = _entries(plan, "flops", "forward FLOPs per token", length=corpus.avg_tokens)
    for system in cp.SYSTEMS:
      (time_,) = _entries(plan, "encode", "encode time", corpus=corpus.name, system=system.name)
      assert time_["label"] == "computed"
      assert time_["value"] == pytest.approx(
          corpus.passages * corpus.avg_tokens * per_token["value"]
          / (system.chips * system.peak_flops * 0.4))
      (padded,) = _entries(plan, "encode", "encode time, all padded to max", corpus=corpus.name,
                           system=system.name)
      assert padded["value"] > time_["value"]


@_WITH_PLAN
def test_scann_sizes_and_extrapolation(quick_plan):
  plan, _ = quick_plan
  builds = plan["measurements"]["scann"]
  assert [b["vectors"] for b in builds] == [2000, 4000]
  for build in builds:
    # On disk ScaNN keeps one byte per 2-dim block (unpacked), twice with SOAR, + 2 int32 ids.
    assert build["hashed_bytes_per_vector"] == pytest.approx(2 * 384 + 8, abs=1)
    assert build["reorder_bytes_per_vector"] == pytest.approx(768 * 4, abs=1)
    assert build["build_wall_s"] > 0 and build["build_cpu_s"] > 0
  for corpus in cp.CORPORA:
    for system in cp.SYSTEMS:
      where = dict(corpus=corpus.name, system=system.name)
      (codes,) = _entries(plan, "scann", "AH codes per shard (in memory, 4 bit / 2 dims)",
                          **where)
      shard = codes["shard_vectors"]
      assert shard == -(-corpus.passages // system.scann_shards)
      assert codes["value"] == shard * 384 * 0.5
      (total,) = _entries(plan, "scann", "index per shard in memory", **where)
      assert total["value"] == pytest.approx(
          2 * shard * 192 + shard * 8 + shard * 768 * 4 + round(math.sqrt(shard)) * 768 * 4)
      one = {m: _entries(plan, "scann", f"build time per shard, {m}, 1 thread", **where)[0]
             for m in ("linear", "N^1.5")}
      every = {m: _entries(plan, "scann", f"build time per shard, {m}, all vCPUs", **where)[0]
               for m in ("linear", "N^1.5")}
      cores = system.host_vcpus * system.hosts / system.scann_shards
      for model in one:
        assert one[model]["label"] == every[model]["label"] == "extrapolated"
        assert every[model]["value"] == pytest.approx(one[model]["value"] / cores)
      assert one["N^1.5"]["value"] > one["linear"]["value"]


@_WITH_PLAN
def test_grad_cache_needs_less_memory_than_the_full_batch(quick_plan):
  plan, _ = quick_plan
  memory = plan["measurements"]["train_memory"]
  by_mode = {m["mode"]: m for m in memory}
  assert set(by_mode) == {"full", "grad_cache"}
  full, cached = by_mode["full"], by_mode["grad_cache"]
  assert (full["queries"], full["passages"]) == (cached["queries"], cached["passages"])
  assert cached["peak_bytes"] < full["peak_bytes"] / 4
  for mode in ("full", "grad_cache (chunk 8)"):
    (analytic,) = _entries(plan, "memory", "per-device step memory (analytic)", mode=mode)
    assert analytic["label"] == "computed"
  analytic = {e["mode"]: e["value"]
              for e in _entries(plan, "memory", "per-device step memory (analytic)")}
  assert analytic["grad_cache (chunk 8)"] < analytic["full"]
  for m in memory:
    # The compiled step's arguments are exactly the (donated) train state and the batch.
    assert m["argument_size_in_bytes"] == m["state_bytes"] + m["batch_bytes"]
    assert m["alias_size_in_bytes"] == m["state_bytes"]
    assert m["peak_bytes"] == (m["argument_size_in_bytes"] + m["output_size_in_bytes"]
                               - m["alias_size_in_bytes"] + m["temp_size_in_bytes"])
    # Params + two AdamW moments of two towers in float32, plus a few scalars (step, rng, counts).
    tiny_params = cm.param_count(cm.encoder_config(cp.TINY))
    assert 0 <= m["state_bytes"] - tiny_params * 2 * 12 < 1024


@_WITH_PLAN
def test_params_and_optimizer_state_per_device(quick_plan):
  plan, _ = quick_plan
  for system in cp.SYSTEMS:
    (state,) = _entries(plan, "state", "params + AdamW moments per device", system=system.name)
    assert state["value"] == _BERT_PARAMS * 4 * 3 * 2
    assert state["label"] == "computed"


def test_bad_inputs():
  with pytest.raises(ValueError, match="label"):
    cp.entry("storage", "x", 1.0, "bytes", "guessed", "how")
  with pytest.raises(ValueError, match="mode"):
    cm.measure_train_memory(cm.encoder_config(cp.TINY), queries=2, group=2, query_tokens=8,
                            passage_tokens=8, mode="half")
  flag_values = flags.FlagValues()
  cp.define_flags(flag_values)
  flag_values(["capacity_plan"])
  with pytest.raises(app.UsageError, match="unexpected"):
    cp.main(["capacity_plan", "extra"], flag_values)


@_WITH_PLAN
def test_paper_recipe_steps_are_compiled_with_their_settings(quick_plan):
  plan, _ = quick_plan
  for recipe in ("DPR", "ANCE"):
    flops = _entries(plan, "recipes", "step FLOPs per device", recipe=recipe)
    assert len(flops) == 1 and flops[0]["label"] == "measured"  # --quick: the first system
    bound = _entries(plan, "recipes", "roofline MFU bound", recipe=recipe)[0]["value"]
    assert 0.0 < bound <= 1.0
    timed = _entries(plan, "recipes", "step time at MFU", recipe=recipe)[0]["value"]
    assert timed == pytest.approx(flops[0]["value"] / (cp.SYSTEMS[0].peak_flops * 0.4))
  # DPR's two towers and in-batch scores cost more than ANCE's one tower on fewer rows.
  assert (_entries(plan, "recipes", "step FLOPs per device", recipe="DPR")[0]["value"]
          > _entries(plan, "recipes", "step FLOPs per device", recipe="ANCE")[0]["value"])


def test_refresh_schedules_trade_chips_for_overlap():
  system = cp.SYSTEMS[0]  # 16 chips, 4 hosts
  entries, notes = capacity_recipes.refresh_entries(
      cp.entry, system, step_flops_per_device=1e12, flops_per_token=1e8, build_s=30.0, mfu=0.5)
  rate = system.peak_flops * 0.5
  setup = capacity_recipes.RefreshSetup()
  train = lambda chips: setup.every_steps * 16e12 / (chips * rate)
  tokens = setup.passages * setup.passage_tokens + setup.queries * setup.query_tokens
  encode = lambda chips: tokens * 1e8 / (chips * rate)
  cycle = {e["schedule"]: e["value"] for e in entries if e["quantity"] == "cycle time"}
  assert cycle == pytest.approx({
      "sync": train(16) + encode(16) + 30.0,
      "async, shared chips": train(16) + encode(16),
      "set aside 8 (2 per host)": max(train(8), encode(8) + 30.0)})
  stale = {e["schedule"]: e["value"] for e in entries if e["quantity"] == "staleness"}
  assert "sync" not in stale
  assert stale["set aside 8 (2 per host)"] == pytest.approx(
      (encode(8) + 30.0) / (train(8) / setup.every_steps))
  assert notes == ["set aside 4 (1 per host): batch 64 does not divide over 12 training chips"]
  assert all(math.isfinite(e["value"]) and e["value"] > 0 for e in entries)
