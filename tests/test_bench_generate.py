"""`eval/bench_generate.py` on a tiny random LM (the real engines run in the benchmark)."""

import json

import pytest
from absl import flags

from eval import bench_generate


def test_jax_engine_generates_the_workload_and_the_others_are_named_when_skipped():
  result = bench_generate.run("random", ["jax", "llama_cpp"], "synthetic", prompts=2,
                              candidates=2, samples=2, max_new_tokens=3, rounds=2, threads=1,
                              tokenizer="minilm", log=lambda _: None)
  row = result["summary"]["jax"]
  assert row["tokens"] == 2 * 2 * 3 and len(result["times"]["jax"]) == 2
  assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"])
  assert "llama_cpp" in result["skipped"] and "llama_cpp" not in result["summary"]
  assert result["cpu"]
  assert "| jax |" in bench_generate.format_table(result)


def test_main_writes_json_and_rejects_unknown_engines(tmp_path, capsys):
  fv = flags.FlagValues()
  bench_generate.define_flags(fv)
  out = tmp_path / "bench.json"
  fv(["bench", f"--out={out}", "--model=random", "--tokenizer=minilm", "--engines=jax",
      "--data=synthetic", "--prompts=1", "--candidates=1", "--samples=1",
      "--max_new_tokens=2", "--rounds=1"])
  bench_generate.main([], fv)
  assert json.loads(out.read_text())["summary"]["jax"]["tokens"] == 2
  fv.engines = ["vllm"]
  with pytest.raises(SystemExit, match="unknown"):
    bench_generate.main([], fv)
