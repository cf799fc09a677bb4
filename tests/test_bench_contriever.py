"""eval/bench_contriever.py on the smoke variant: the schema and the table."""

import json

from absl import flags
import pytest

from eval import bench_contriever


@pytest.mark.slow  # compiles three training steps of the script: a minute on 2 cores
def test_smoke_benchmark_writes_the_schema(tmp_path, capsys):
  flag_values = flags.FlagValues()
  bench_contriever.define_flags(flag_values)
  out = tmp_path / "nested" / "bench.json"
  flag_values(["bench", "--variant=smoke", "--steps=2", "--rounds=2", f"--out={out}"])
  bench_contriever.main(["bench"], flag_values)
  result = json.loads(out.read_text())
  assert result["cpu"] and result["settings"]["queue_size"] == 24
  for name in ("moco", "moco_queue_b", "in_batch"):
    assert len(result["steps_per_s"][name]) == 2
    assert all(v > 0 for v in result["steps_per_s"][name])
  assert result["moco_over_in_batch_paired_median"] > 0
  assert result["moco_over_moco_queue_b_paired_median"] > 0
  printed = capsys.readouterr().out
  assert "MoCo / in-batch" in printed and "| moco_queue_b |" in printed
