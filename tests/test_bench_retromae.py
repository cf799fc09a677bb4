"""eval/bench_retromae.py on the smoke variant: the schema and the table."""

import json

from absl import flags
import pytest

from eval import bench_retromae


@pytest.mark.slow  # compiles three training steps of the script: a minute on 2 cores
def test_smoke_benchmark_writes_the_schema(tmp_path, capsys):
  flag_values = flags.FlagValues()
  bench_retromae.define_flags(flag_values)
  out = tmp_path / "bench.json"
  flag_values(["bench", "--variant=smoke", "--steps=1", "--rounds=2", f"--out={out}"])
  bench_retromae.main(["bench"], flag_values)
  result = json.loads(out.read_text())
  assert result["cpu"] and result["settings"]["max_length"] == 32
  for name in ("retromae", "mlm", "retromae_all_logits"):
    assert len(result["tokens_per_s"][name]) == 2 and min(result["tokens_per_s"][name]) > 0
    assert result["tokens_per_s"][name][0] == result["steps_per_s"][name][0] * 8 * 32
  assert result["retromae_over_mlm_paired_median"] > 0
  assert result["labelled_over_all_logits_paired_median"] > 0
  assert "| retromae |" in capsys.readouterr().out
