"""retrieval_jax.host_malloc: tcmalloc preloaded by re-executing the program."""

import json
import os
import subprocess
import sys

import pytest

from retrieval_jax import host_malloc
from tests import helpers

_LINUX = sys.platform.startswith("linux")

# A program (run as `python -c`, so re-executing reruns it): choose the C heap, then call a
# jitted function whose 64 MiB intermediate XLA:CPU allocates on its worker thread and frees
# when each call ends; print the allocator line and the minor page faults per call.
_FAULTS_PER_CALL = r"""
import json, os, resource, sys, time
from retrieval_jax import host_malloc
line = host_malloc.ensure(sys.argv[1], may_reexec=True)
import jax, jax.numpy as jnp
x, w = jnp.ones((2048, 8192), jnp.float32), jnp.ones((8192, 8), jnp.float32)
f = jax.jit(lambda v, w: jnp.sin(v) @ w)  # sin(v) is materialised: 64 MiB
for _ in range(3):
  f(x, w).block_until_ready()
  time.sleep(0.2)
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  # XLA frees the block on its own thread after the call (a training loop's host work gives
  # it that time).
  time.sleep(0.2)
print(json.dumps({"line": line, "faults": sorted(faults)[2], "describe": host_malloc.describe(),
                  "marker": os.environ.get(host_malloc.REEXEC_ENV),
                  "ld_preload": os.environ.get("LD_PRELOAD", ""),
                  "tcmalloc_report": os.environ.get("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD")}))
"""
_PAGES_PER_BLOCK = 64 * 2**20 // 4096


def _run(choice: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL, choice], cwd=helpers.REPO,
                        env={**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags(),
                             "JAX_PLATFORMS": "cpu", **(env or {})},
                        capture_output=True, text=True, timeout=300, check=False)


def _result(choice: str, env: dict | None = None) -> dict:
  run = _run(choice, env)
  assert run.returncode == 0, run.stderr[-2000:]
  return json.loads(run.stdout.strip().splitlines()[-1])


_NO_TCMALLOC = "tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4)"


@pytest.mark.skipif(not _LINUX, reason="preloading is Linux-only")
def test_auto_preloads_tcmalloc_and_stops_the_per_call_page_faults():
  library = host_malloc.find_tcmalloc()
  if library is None:
    pytest.skip(_NO_TCMALLOC)
  system, auto = _result("system"), _result("auto")
  # glibc maps the block afresh and faults in every page of it on each call ...
  assert system["line"] == "glibc malloc (--malloc=system)"
  assert system["describe"] == "glibc malloc"
  assert system["faults"] >= _PAGES_PER_BLOCK, system
  # ... the re-executed process runs on tcmalloc, which reuses the freed pages.
  assert auto["line"].startswith("tcmalloc (/"), auto
  assert auto["describe"] == auto["line"]
  assert auto["ld_preload"].split(":")[0] == library
  assert auto["marker"] is None  # consumed: the program's own children start afresh
  assert auto["faults"] < _PAGES_PER_BLOCK // 20, auto
  assert int(auto["tcmalloc_report"]) >= 2**40  # the re-executed process reports no large allocs
  assert _result("tcmalloc")["line"] == auto["line"]


@pytest.mark.skipif(not _LINUX, reason="preloading is Linux-only")
def test_an_allocator_the_user_preloaded_is_kept():
  library = host_malloc.find_tcmalloc()
  if library is None or not os.path.isabs(library):
    pytest.skip(_NO_TCMALLOC)
  result = _result("system", env={"LD_PRELOAD": library})
  assert result["line"] == result["describe"] and library in result["line"], result
  assert result["ld_preload"] == library  # not re-executed: nothing prepended


@pytest.mark.skipif(not _LINUX, reason="preloading is Linux-only")
def test_a_file_that_cannot_be_preloaded_is_one_error_line(tmp_path):
  not_a_library = tmp_path / "libnot.so"
  not_a_library.write_text("not ELF")
  program = ("import sys\nfrom retrieval_jax import host_malloc\n"
             "host_malloc.ensure_or_exit(sys.argv[1], may_reexec=True)\nprint('went on')\n")
  run = subprocess.run([sys.executable, "-c", program, str(not_a_library)], cwd=helpers.REPO,
                       capture_output=True, text=True, timeout=120, check=False)
  assert run.returncode == 1 and "went on" not in run.stdout
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: --malloc={not_a_library}: {not_a_library} could not be "
                         "preloaded"), run.stderr
  assert "Traceback" not in run.stderr


def test_main_rejects_an_unknown_malloc_in_one_line(tmp_path):
  run = subprocess.run(
      [sys.executable, "main.py", "--config=configs/zeroshot.py", f"--workdir={tmp_path}",
       "--malloc=jemalloc"], cwd=helpers.REPO, capture_output=True, text=True,
      env={**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags()}, timeout=120, check=False)
  assert run.returncode == 1
  assert "--malloc must be auto, system, tcmalloc or an existing file" in run.stderr
  assert "Traceback" not in run.stderr


@pytest.mark.skipif(not _LINUX, reason="preloading is Linux-only")
def test_main_reexecutes_itself_onto_the_allocator_before_anything_else(tmp_path):
  if host_malloc.find_tcmalloc() is None:
    pytest.skip(_NO_TCMALLOC)
  # A data set that does not exist: the run stops with its one error line right after the
  # allocator is chosen, so nothing compiles.
  args = [sys.executable, "main.py", "--config=configs/dpr.py:smoke", f"--workdir={tmp_path}",
          f"--config.data.name={tmp_path / 'missing'}"]
  env = {**os.environ, "XLA_FLAGS": helpers.one_device_xla_flags(), "JAX_PLATFORMS": "cpu"}
  auto = subprocess.run(args, cwd=helpers.REPO, capture_output=True, text=True, env=env,
                        timeout=300, check=False)
  system = subprocess.run([*args, "--malloc=system"], cwd=helpers.REPO, capture_output=True,
                          text=True, env=env, timeout=300, check=False)
  assert auto.returncode == system.returncode == 1, (auto.stderr[-1500:], system.stderr[-1500:])
  assert "C heap: re-executing with LD_PRELOAD=" in auto.stderr
  assert f"C heap: tcmalloc ({host_malloc.find_tcmalloc()})" in auto.stderr
  assert "C heap: glibc malloc (--malloc=system)" in system.stderr
  assert "re-executing" not in system.stderr
  # The error line comes once: the first process became the second.
  assert auto.stderr.count("missing") == system.stderr.count("missing") >= 1


# ----------------------------------------------------------------------------- in-process


def test_find_system_library_takes_the_release_library_not_the_debug_one(tmp_path):
  for name in ("libtcmalloc_minimal_debug.so.4", "libtcmalloc_minimal.so.4.5.10",
               "libtcmalloc_minimal.so.4", "libtcmalloc_minimal.so.4.py"):
    (tmp_path / name).write_text("")
  found = host_malloc.find_system_library(("tcmalloc_minimal", "tcmalloc"), [str(tmp_path)])
  assert found == str(tmp_path / "libtcmalloc_minimal.so.4")
  assert host_malloc.find_system_library(("jemalloc",), [str(tmp_path)]) is None


def test_preload_environment_puts_the_allocator_first_and_keeps_the_users_settings():
  env = host_malloc.preload_environment(
      "/lib/libtcmalloc_minimal.so.4",
      {"LD_PRELOAD": "/opt/libhook.so", "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "1"})
  assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4:/opt/libhook.so"
  assert env[host_malloc.REEXEC_ENV] == "/lib/libtcmalloc_minimal.so.4"
  assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "1"
  quiet = host_malloc.preload_environment("/lib/libtcmalloc.so.4", {})
  assert quiet["LD_PRELOAD"] == "/lib/libtcmalloc.so.4"
  assert int(quiet["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 2**40
  assert "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD" not in host_malloc.preload_environment(
      "/opt/libjemalloc.so.2", {})


def test_define_flag_twice_on_one_flag_values_gives_the_same_flag():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flag_values = flags.FlagValues()
  first, second = host_malloc.define_flag(flag_values), host_malloc.define_flag(flag_values)
  flag_values(["prog", "--malloc=system"])
  assert first.value == second.value == "system"
  with pytest.raises(flags.IllegalFlagValueError, match="--malloc must be auto, system"):
    flag_values(["prog", "--malloc=jemalloc"])


def test_reexec_argv_reruns_the_command_line_with_this_interpreter(monkeypatch):
  monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "eval.bench_train", "--rounds=2"])
  assert host_malloc.reexec_argv() == [sys.executable, "-m", "eval.bench_train", "--rounds=2"]


@pytest.fixture
def glibc_process(monkeypatch):
  """This process as if it ran on glibc's malloc, on Linux, with no re-exec behind it."""
  monkeypatch.setattr(host_malloc, "_mapped_files", lambda: ["/usr/lib/libc.so.6"])
  monkeypatch.setattr(sys, "platform", "linux")
  monkeypatch.delenv(host_malloc.REEXEC_ENV, raising=False)

  def no_exec(*args):
    raise AssertionError(f"re-executed: {args}")

  monkeypatch.setattr(os, "execve", no_exec)


def test_tcmalloc_not_found_is_an_error_and_auto_says_how_to_install_it(glibc_process,
                                                                        monkeypatch):
  del glibc_process
  monkeypatch.setattr(host_malloc, "find_tcmalloc", lambda: None)
  with pytest.raises(SystemExit, match=r"^error: --malloc=tcmalloc: no libtcmalloc_minimal\.so "
                     r"or libtcmalloc\.so found \(apt-get install libtcmalloc-minimal4"):
    host_malloc.ensure_or_exit("tcmalloc", may_reexec=True)
  line = host_malloc.ensure("auto", may_reexec=True)
  assert line.startswith("glibc malloc: tcmalloc not found (apt-get install "
                         "libtcmalloc-minimal4, dnf install gperftools-libs or conda install")
  assert line.endswith("--malloc=system silences this); XLA:CPU then faults in its buffers "
                       "afresh on every call (CPU training runs 1.1-1.2x slower)")
  assert host_malloc.ensure("system", may_reexec=True) == "glibc malloc (--malloc=system)"


def test_a_path_that_is_not_a_file_is_an_error(glibc_process, tmp_path):
  del glibc_process
  with pytest.raises(host_malloc.MallocError, match="not auto, system, tcmalloc or a file"):
    host_malloc.ensure(str(tmp_path / "libnothing.so"), may_reexec=True)


def test_no_reexec_where_the_process_is_not_the_programs_own(glibc_process, monkeypatch):
  del glibc_process
  monkeypatch.setattr(host_malloc, "find_tcmalloc", lambda: "/lib/libtcmalloc.so.4")
  line = host_malloc.ensure("auto", may_reexec=False)
  assert line == ("glibc malloc: /lib/libtcmalloc.so.4 is not preloaded (not this program's "
                  "own process; run it with LD_PRELOAD=/lib/libtcmalloc.so.4)")


def test_a_failed_preload_is_not_retried(glibc_process, monkeypatch):
  del glibc_process
  monkeypatch.setattr(host_malloc, "find_tcmalloc", lambda: "/lib/libtcmalloc.so.4")
  monkeypatch.setenv(host_malloc.REEXEC_ENV, "/lib/libtcmalloc.so.4")
  line = host_malloc.ensure("auto", may_reexec=True)  # would raise from execve if retried
  assert line.startswith("glibc malloc: --malloc=auto: /lib/libtcmalloc.so.4 could not be "
                         "preloaded")
  assert host_malloc.REEXEC_ENV not in os.environ
  monkeypatch.setenv(host_malloc.REEXEC_ENV, "/lib/libtcmalloc.so.4")
  with pytest.raises(host_malloc.MallocError, match="could not be preloaded"):
    host_malloc.ensure("tcmalloc", may_reexec=True)


def test_other_systems_keep_their_allocator(monkeypatch):
  monkeypatch.setattr(host_malloc, "_mapped_files", lambda: [])
  monkeypatch.setattr(sys, "platform", "darwin")
  monkeypatch.delenv(host_malloc.REEXEC_ENV, raising=False)
  assert host_malloc.ensure("auto", may_reexec=True) == "the system's malloc (darwin)"
  with pytest.raises(host_malloc.MallocError, match="Linux only"):
    host_malloc.ensure("tcmalloc", may_reexec=True)
