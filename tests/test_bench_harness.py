"""The benchmarks' shared harness: machine description, ABBA rounds, paired ratios."""

import json

import pytest

from eval import bench_harness
from retrieval_jax import host_malloc

_CPUINFO = """\
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
physical id	: 0
core id		: 0
flags		: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_bf16 amx_tile amx_bf16

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
physical id	: 0
core id		: 0
flags		: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_bf16 amx_tile amx_bf16
"""


def test_cpu_info_reads_model_extensions_and_cores():
  info = bench_harness.cpu_info(_CPUINFO)
  assert info["model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
  assert info["vendor"] == "GenuineIntel"
  assert info["flags"] == ["avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16",
                           "amx_tile", "amx_bf16"]
  # Two hyper-threads of one core.
  assert info["logical_cpus"] == 2 and info["physical_cores"] == 1
  assert "avx512f, avx512_bf16, amx_tile" in bench_harness.cpu_line(info)


def test_cpu_info_without_avx512():
  amd = _CPUINFO.replace("avx512f avx512bw avx512_bf16 amx_tile amx_bf16", "").replace(
      "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "AMD EPYC 7B13 64-Core Processor")
  info = bench_harness.cpu_info(amd)
  assert info["flags"] == ["avx", "avx2", "fma", "f16c"]
  assert bench_harness.cpu_line(info).startswith("AMD EPYC 7B13 64-Core Processor (avx2;")


def test_cpu_info_of_this_machine_names_a_model():
  info = bench_harness.cpu_info()
  assert info["model"] and info["usable_cpus"] >= 1


def test_environment_has_versions_threads_and_jax(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top,unused-import
  monkeypatch.setenv("OMP_NUM_THREADS", "3")
  monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
  env = bench_harness.environment()
  assert env["versions"]["jax"] and env["versions"]["python"]
  assert env["threads"]["OMP_NUM_THREADS"] == "3"
  # The C allocator moves XLA:CPU's step time (WORKSPACE, "Performance"): it is recorded.
  assert env["threads"]["LD_PRELOAD"].endswith("libtcmalloc_minimal.so.4")
  # What is mapped, not what the variable says (this process started without it).
  assert env["malloc"] == host_malloc.describe()
  assert env["jax_devices"] >= 1 and env["jax_backend"] == "cpu"
  json.dumps(env)  # JSON as it is


def test_alternate_runs_sides_in_abba_order():
  calls = []
  seconds, results = bench_harness.alternate(
      {"a": lambda: calls.append("a") or len(calls), "b": lambda: calls.append("b") or len(calls)},
      rounds=4)
  assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
  assert results == {"a": [1, 4, 5, 8], "b": [2, 3, 6, 7]}
  assert all(len(v) == 4 and min(v) >= 0 for v in seconds.values())
  with pytest.raises(ValueError, match="rounds=0"):
    bench_harness.alternate({"a": lambda: None}, rounds=0)


def test_speed_ratio_three_ways():
  ratio = bench_harness.speed_ratio([1.0, 2.0, 1.5], [2.0, 3.0, 6.0])
  assert ratio["ratio"] == pytest.approx(3.0 / 1.5)
  assert ratio["ratio_per_round"] == pytest.approx([2.0, 1.5, 4.0])
  assert ratio["ratio_paired_median"] == pytest.approx(2.0)
  assert ratio["ratio_best"] == pytest.approx(2.0)
  with pytest.raises(ValueError, match="same"):
    bench_harness.speed_ratio([1.0], [1.0, 2.0])


def test_paired_median_of_rates():
  assert bench_harness.paired_median({"a": [2.0, 4.0, 9.0], "b": [1.0, 1.0, 3.0]},
                                     "a", "b") == pytest.approx(3.0)


def test_write_json(tmp_path, capsys):
  out = tmp_path / "deep" / "result.json"
  bench_harness.write_json({"ratio": 1.5}, out)
  assert json.loads(out.read_text()) == {"ratio": 1.5}
  assert f"wrote {out}" in capsys.readouterr().out
  bench_harness.write_json({"ratio": 1.5}, None)  # no --out: nothing written
