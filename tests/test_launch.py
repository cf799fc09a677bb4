"""launch/: the dry-run commands of the three launchers, their argument errors, and real runs
of local_multiprocess.sh (and of the TPU and SLURM scripts against fake gcloud/srun) with a
tiny Python stand-in for main.py. No network, no real gcloud or SLURM."""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_LAUNCH = _REPO / "launch"
_BASH = shutil.which("bash")
# Forwarded overrides that need quoting: a space, a single quote, a shell variable.
_ARGS = ["--config=configs/ance.py", "--workdir=/tmp/w", "--config.data.name=a b",
         "--config.note=it's", "$HOME"]

# Records its argv, pid and environment in $STANDIN_OUT/process_<id>.json, then behaves as
# --standin_fail / --standin_sleep / --standin_child ask.
_STANDIN = textwrap.dedent("""\
    import json, os, pathlib, subprocess, sys, time
    args = sys.argv[1:]
    pid = next((a.split("=", 1)[1] for a in args if a.startswith("--process_id=")), "x")
    out = pathlib.Path(os.environ["STANDIN_OUT"])
    record = {"argv": args, "pid": os.getpid(), "env": {k: os.environ.get(k) for k in (
        "JAX_PLATFORMS", "XLA_FLAGS", "JAX_CPU_COLLECTIVES_IMPLEMENTATION",
        "JAX_LOCAL_DEVICE_IDS")}}
    if "--standin_child" in args:
      child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
      record["child"] = child.pid
    (out / f"process_{pid}.json.tmp").write_text(json.dumps(record))
    (out / f"process_{pid}.json.tmp").rename(out / f"process_{pid}.json")
    print(f"stand-in {pid} started", flush=True)
    if f"--standin_fail={pid}" in args:
      while not (out / "process_0.json").exists():  # fail only once process 0 is up
        time.sleep(0.01)
      print(f"stand-in {pid} failing", flush=True)
      sys.exit(1)
    if "--standin_sleep" in args:
      time.sleep(60)
""")


def _run(script, *args, env=None, timeout=30):
  """Runs launch/<script> with bash; returns the CompletedProcess (text)."""
  full_env = dict(os.environ)
  full_env.pop("PYTHON", None)
  full_env.update(env or {})
  return subprocess.run([_BASH, str(_LAUNCH / script), *args], capture_output=True, text=True,
                        env=full_env, timeout=timeout, check=False)


def _stub(directory, name, source):
  """Writes an executable Python script `name` into `directory` (a fake command for PATH)."""
  path = pathlib.Path(directory) / name
  path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(source))
  path.chmod(0o755)
  return path


def _records(out_dir, n):
  """The stand-in records of processes 0..n-1."""
  return [json.loads((out_dir / f"process_{i}.json").read_text()) for i in range(n)]


def _wait_for(predicate, timeout=10.0):
  """Polls `predicate` until it is true; fails the test after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.02)


def _alive(pid):
  """Whether `pid` runs (a zombie awaiting its reaper counts as dead)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  stat = pathlib.Path(f"/proc/{pid}/stat")
  try:
    return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    return True


# --- local_multiprocess.sh ---------------------------------------------------------------------


def test_local_dry_run_prints_every_process():
  result = _run("local_multiprocess.sh", "3", "2", "--dry-run", "--port=4321", "--", *_ARGS,
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1"})
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert shlex.split(line) == [
        "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_cpu_foo=1 --xla_force_host_platform_device_count=2",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo", "python", str(_REPO / "main.py"), *_ARGS,
        "--coordinator_address=127.0.0.1:4321", "--num_processes=3", f"--process_id={i}"]
  assert lines[0].startswith("JAX_PLATFORMS=cpu XLA_FLAGS='--xla_cpu_foo=1 "
                             "--xla_force_host_platform_device_count=2' "
                             "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo python ")


def test_local_dry_run_picks_a_free_port_and_uses_python_env():
  result = _run("local_multiprocess.sh", "--dry-run", "2", "1", "--", "--config=configs/dpr.py",
                env={"PYTHON": sys.executable})
  assert result.returncode == 0, result.stderr
  argvs = [shlex.split(line) for line in result.stdout.splitlines()]
  ports = {a.rsplit(":", 1)[1] for argv in argvs for a in argv if "coordinator" in a}
  assert len(ports) == 1 and 0 < int(ports.pop()) < 65536
  assert [argv[3] for argv in argvs] == [sys.executable] * 2
  assert [argv[-1] for argv in argvs] == ["--process_id=0", "--process_id=1"]


@pytest.mark.parametrize("args, message", [
    ([], "expected N (processes) and D"),
    (["2"], "expected N (processes) and D"),
    (["1", "2", "3"], "expected N (processes) and D"),
    (["0", "2"], "N (number of processes) must be an integer >= 1, got '0'"),
    (["two", "2"], "N (number of processes) must be an integer >= 1, got 'two'"),
    (["2", "-1"], "D (devices per process) must be an integer >= 1, got '-1'"),
    (["2", "1.5"], "D (devices per process) must be an integer >= 1, got '1.5'"),
    (["2", "2", "--port=99999"], "--port must be an integer in 1..65535"),
    (["2", "2", "--config=configs/dpr.py"], "unknown option '--config=configs/dpr.py'"),
])
def test_local_bad_arguments(args, message):
  result = _run("local_multiprocess.sh", *args, "--dry-run")
  assert result.returncode != 0
  assert message in result.stderr
  assert not result.stdout


@pytest.fixture
def standin(tmp_path):
  """The environment that makes local_multiprocess.sh run the stand-in; records go to out/."""
  out = tmp_path / "out"
  out.mkdir()
  script = tmp_path / "standin.py"
  script.write_text(_STANDIN)
  return out, {"PYTHON": sys.executable, "RETRIEVAL_JAX_MAIN": str(script),
               "STANDIN_OUT": str(out), "KILL_GRACE_SECONDS": "5"}


def test_local_runs_all_processes_with_their_ids_and_env(standin, tmp_path):
  out, env = standin
  logs = tmp_path / "logs"
  result = _run("local_multiprocess.sh", "3", "2", f"--log_dir={logs}", "--", *_ARGS, env=env)
  assert result.returncode == 0, result.stderr
  records = _records(out, 3)
  port = records[0]["argv"][-3].rsplit(":", 1)[1]
  for i, record in enumerate(records):
    assert record["argv"] == [*_ARGS, f"--coordinator_address=127.0.0.1:{port}",
                              "--num_processes=3", f"--process_id={i}"]
    assert record["env"]["JAX_PLATFORMS"] == "cpu"
    assert record["env"]["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
    # conftest.py exports 8 devices; the script's own count replaces it, other flags stay.
    counts = [f for f in record["env"]["XLA_FLAGS"].split()
              if f.startswith("--xla_force_host_platform_device_count=")]
    assert counts == ["--xla_force_host_platform_device_count=2"]
    assert (logs / f"process_{i}.log").read_text() == f"stand-in {i} started\n"


def test_local_default_logs_process_0_to_terminal_others_to_temp_dir(standin):
  out, env = standin
  result = _run("local_multiprocess.sh", "2", "1", "--", "--x", env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout == "stand-in 0 started\n"
  log_dir = pathlib.Path(result.stderr.split("write to ")[1].split("/process_<i>.log")[0])
  assert (log_dir / "process_1.log").read_text() == "stand-in 1 started\n"
  shutil.rmtree(log_dir)


def test_local_failure_stops_the_others(standin, tmp_path):
  out, env = standin
  start = time.monotonic()
  result = _run("local_multiprocess.sh", "2", "1", f"--log_dir={tmp_path / 'logs'}", "--",
                "--standin_fail=1", "--standin_sleep", env=env, timeout=20)
  assert time.monotonic() - start < 8
  assert result.returncode == 1
  assert "process 1 (pid" in result.stderr and "exit status 1" in result.stderr
  assert "stand-in 1 failing" in result.stderr  # the tail of its log
  sleeper = _records(out, 1)[0]["pid"]
  with pytest.raises(ProcessLookupError):
    os.kill(sleeper, 0)


def test_local_sigterm_leaves_no_process_behind(standin, tmp_path):
  out, env = standin
  proc = subprocess.Popen(
      [_BASH, str(_LAUNCH / "local_multiprocess.sh"), "3", "1", f"--log_dir={tmp_path / 'logs'}",
       "--", "--standin_sleep", "--standin_child"],
      env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(lambda: all((out / f"process_{i}.json").exists() for i in range(3)))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 143
  finally:
    if proc.poll() is None:
      proc.kill()
  assert "terminated, stopping all processes" in proc.stderr.read()
  for record in _records(out, 3):
    with pytest.raises(ProcessLookupError):
      os.kill(record["pid"], 0)
    # What a process spawned shares its process group, so it is stopped too.
    _wait_for(lambda pid=record["child"]: not _alive(pid), timeout=5)


# --- tpu_pod.sh --------------------------------------------------------------------------------


def _remote_command(argv):
  """The --command=... of a gcloud ssh argv, split into words."""
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert argv[-1].startswith("--command=")
  return argv[6:-1], shlex.split(argv[-1][len("--command="):])


def test_tpu_dry_run_syncs_installs_and_runs_on_all_workers(tmp_path):
  result = _run("tpu_pod.sh", "--tpu=my-tpu", "--zone=us-central2-b", "--project=proj",
                "--install", "--dry-run", "--", *_ARGS, env={"TMPDIR": str(tmp_path)})
  assert result.returncode == 0, result.stderr
  comment, scp, unpack, install, run = result.stdout.splitlines()
  tarball = f"{tmp_path}/retrieval_jax_my-tpu.tar.gz"
  assert comment.startswith("# pack") and tarball in comment
  flags = ["--zone=us-central2-b", "--project=proj", "--worker=all"]
  assert shlex.split(scp) == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                              "my-tpu:/tmp/retrieval_jax_repo.tar.gz", *flags]
  assert _remote_command(shlex.split(unpack)) == (flags, [
      "mkdir", "-p", "~/retrieval_jax", "&&", "tar", "-xzf", "/tmp/retrieval_jax_repo.tar.gz",
      "-C", "~/retrieval_jax", "&&", "rm", "-f", "/tmp/retrieval_jax_repo.tar.gz"])
  assert _remote_command(shlex.split(install)) == (flags, [
      "cd", "~/retrieval_jax", "&&", "python3", "-m", "pip", "install", "-e", ".", "jax[tpu]"])
  assert _remote_command(shlex.split(run)) == (flags, [
      "cd", "~/retrieval_jax", "&&", "python3", "main.py", *_ARGS, "--distributed=true"])
  assert run == ("gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --project=proj "
                 "--worker=all --command='cd ~/retrieval_jax && python3 main.py "
                 "--config=configs/ance.py --workdir=/tmp/w --config.data.name=a\\ b "
                 "--config.note=it\\'\\''s \\$HOME --distributed=true'")


def test_tpu_dry_run_no_sync_custom_dir_and_python():
  result = _run("tpu_pod.sh", "--tpu=my-tpu", "--zone=z", "--no-sync", "--repo_dir=/opt/my code",
                "--python=/venv/bin/python", "--dry-run", "--", "--config=configs/ance.py")
  assert result.returncode == 0, result.stderr
  (line,) = result.stdout.splitlines()
  assert _remote_command(shlex.split(line)) == (["--zone=z", "--worker=all"], [
      "cd", "/opt/my code", "&&", "/venv/bin/python", "main.py", "--config=configs/ance.py",
      "--distributed=true"])


@pytest.mark.parametrize("args, message", [
    (["--zone=z"], "--tpu=NAME is required"),
    (["--tpu=t"], "--zone=ZONE is required"),
    (["--tpu", "t", "--zone=z"], "write --tpu=VALUE"),
    (["--tpu=t", "--zone=z", "--config=configs/ance.py"], "unknown argument '--config=configs"),
])
def test_tpu_bad_arguments(args, message):
  result = _run("tpu_pod.sh", *args, "--dry-run")
  assert result.returncode != 0
  assert message in result.stderr


def test_tpu_without_gcloud(tmp_path):
  result = _run("tpu_pod.sh", "--tpu=t", "--zone=z", "--", "--x", env={"PATH": str(tmp_path)})
  assert result.returncode != 0
  assert "gcloud not found on PATH" in result.stderr


def test_tpu_real_run_against_fake_gcloud(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "calls.jsonl"
  _stub(bin_dir, "gcloud", f"""\
      import json, subprocess, sys
      call = {{"argv": sys.argv[1:]}}
      if sys.argv[4] == "scp":  # what the tarball holds
        call["files"] = subprocess.run(["tar", "-tzf", sys.argv[5]], capture_output=True,
                                       text=True, check=True).stdout.split()
      with open({str(calls)!r}, "a") as f:
        f.write(json.dumps(call) + "\\n")
      """)
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  result = _run("tpu_pod.sh", "--tpu=my-tpu", "--zone=z", "--", "--config.x=a b",
                env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp)})
  assert result.returncode == 0, result.stderr
  scp, unpack, run = [json.loads(line) for line in calls.read_text().splitlines()]
  assert scp["argv"][3:] == ["scp", f"{tmp}/retrieval_jax_my-tpu.tar.gz",
                             "my-tpu:/tmp/retrieval_jax_repo.tar.gz", "--zone=z", "--worker=all"]
  assert {"main.py", "launch/tpu_pod.sh", "setup.cfg"} <= set(scp["files"])
  assert not [f for f in scp["files"] if f.startswith((".git/", "runs/")) or "__pycache__" in f]
  assert unpack["argv"][3:6] == ["ssh", "my-tpu", "--zone=z"]
  assert run["argv"][-1] == ("--command=cd ~/retrieval_jax && python3 main.py "
                             "--config.x=a\\ b --distributed=true")
  assert not list(tmp.iterdir())  # the local tarball is removed


# --- slurm_gpu.sbatch --------------------------------------------------------------------------


@pytest.fixture
def slurm_env(tmp_path):
  """A fake allocation of two 8-GPU nodes, 8 tasks each, with a fake scontrol on PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _stub(bin_dir, "scontrol", """\
      import sys
      assert sys.argv[1:] == ["show", "hostnames", "gpu[01-02]"], sys.argv
      print("gpu01\\ngpu02")
      """)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
          "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NNODES": "2", "SLURM_NTASKS": "16",
          "SLURM_NTASKS_PER_NODE": "8", "SLURM_TASKS_PER_NODE": "8(x2)",
          "SLURM_GPUS_ON_NODE": "8"}


def test_slurm_dry_run_one_process_per_gpu(slurm_env):
  result = _run("slurm_gpu.sbatch", "--dry-run", *_ARGS, env=slurm_env)
  assert result.returncode == 0, result.stderr
  header, srun, *tasks = result.stdout.splitlines()
  assert header.startswith("# coordinator gpu01:12345; 16 processes, 8 per node")
  job = ["python", str(_REPO / "main.py"), *_ARGS, "--coordinator_address=gpu01:12345",
         "--num_processes=16"]
  srun_argv = shlex.split(srun)
  assert srun_argv[:5] == ["GPUS_PER_TASK=1", "srun", "--kill-on-bad-exit=1", "bash", "-c"]
  assert srun_argv[6:] == ["slurm_task", *job]
  assert '--process_id="$SLURM_PROCID"' in srun_argv[5]
  assert len(tasks) == 16
  for t, line in enumerate(tasks):
    prefix = f"# task {t} on gpu0{t // 8 + 1} (SLURM_LOCALID={t % 8}): "
    assert line.startswith(prefix)
    assert shlex.split(line[len(prefix):]) == [
        f"JAX_LOCAL_DEVICE_IDS={t % 8}", *job, f"--process_id={t}"]


def test_slurm_dry_run_one_process_per_node(slurm_env):
  env = {**slurm_env, "DRY_RUN": "1", "COORDINATOR_PORT": "23456", "SLURM_NTASKS": "2",
         "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_PER_NODE": "a100:4", "PYTHON": "python3"}
  del env["SLURM_NTASKS_PER_NODE"], env["SLURM_GPUS_ON_NODE"]
  result = _run("slurm_gpu.sbatch", "--", "--config=configs/ance.py", env=env)
  assert result.returncode == 0, result.stderr
  _, srun, *tasks = result.stdout.splitlines()
  job = ["python3", str(_REPO / "main.py"), "--config=configs/ance.py",
         "--coordinator_address=gpu01:23456", "--num_processes=2"]
  assert shlex.split(srun)[0] == "GPUS_PER_TASK=4"
  assert shlex.split(srun)[-len(job):] == job
  assert [shlex.split(t.split(": ", 1)[1]) for t in tasks] == [
      ["JAX_LOCAL_DEVICE_IDS=0,1,2,3", *job, "--process_id=0"],
      ["JAX_LOCAL_DEVICE_IDS=0,1,2,3", *job, "--process_id=1"]]
  assert tasks[1].startswith("# task 1 on gpu02 (SLURM_LOCALID=0): ")


@pytest.mark.parametrize("change, message", [
    ({"SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST is not set"),
    ({"SLURM_NTASKS": "many"}, "SLURM_NTASKS must be an integer >= 1, got 'many'"),
    ({"COORDINATOR_PORT": "http"}, "COORDINATOR_PORT must be an integer in 1..65535"),
    ({"GPUS_PER_TASK": "0"}, "GPUS_PER_TASK must be an integer >= 1"),
    ({"PATH": "/nonexistent"}, "scontrol not found on PATH"),
])
def test_slurm_bad_environment(slurm_env, change, message):
  env = {**os.environ, **slurm_env, **change}
  env = {k: v for k, v in env.items() if v is not None}
  result = subprocess.run([_BASH, str(_LAUNCH / "slurm_gpu.sbatch"), "--dry-run", "--x"],
                          capture_output=True, text=True, env=env, timeout=30, check=False)
  assert result.returncode != 0
  assert message in result.stderr


@pytest.mark.parametrize("visible, expected_ids", [
    ("0,1,2,3", ["0,1", "2,3"]),  # every task sees the node's 4 GPUs: each takes its own 2
    ("4,5", ["0,1", "0,1"]),      # Slurm bound 2 GPUs per task already: they are 0 and 1
])
def test_slurm_real_run_against_fake_srun(slurm_env, standin, tmp_path, visible, expected_ids):
  out, standin_env = standin
  # The fake srun runs the task command once per task of one node, as srun would.
  _stub(pathlib.Path(slurm_env["PATH"].split(":")[0]), "srun", f"""\
      import os, subprocess, sys
      argv = sys.argv[1:]
      assert argv[0] == "--kill-on-bad-exit=1", argv
      for t in range(2):
        env = dict(os.environ, SLURM_PROCID=str(t), SLURM_LOCALID=str(t),
                   CUDA_VISIBLE_DEVICES={visible!r})
        subprocess.run(argv[1:], env=env, check=True)
      """)
  env = {**slurm_env, **standin_env, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
         "SLURM_GPUS_ON_NODE": "4"}
  result = _run("slurm_gpu.sbatch", "--config.x=a b", env=env)
  assert result.returncode == 0, result.stderr
  for t, record in enumerate(_records(out, 2)):
    assert record["argv"] == ["--config.x=a b", "--coordinator_address=gpu01:12345",
                              "--num_processes=2", f"--process_id={t}"]
    assert record["env"]["JAX_LOCAL_DEVICE_IDS"] == expected_ids[t]
