"""Multi-host on one machine: 2 processes x 4 CPU devices against 1 process x 8 devices.

The same `main.py` command runs as two JAX processes joined by `jax.distributed` (coordinator
on 127.0.0.1, gloo collectives) and as one process; each process tokenises only its
half of every global batch, and evaluation encodes and searches half of the corpus per
process. Plain SGD (`optim.name=sgd`) keeps the comparison at rounding level: Adam would turn
the rounding differences of the two all-reduce orders into learning-rate-sized steps.
"""

import json
import pathlib
import re
import shutil
import sys

import jax
import numpy as np
import pytest

from retrieval_jax import checkpoint, preemption, recipes, run_config
from retrieval_jax.index import exact_search, maxp
from retrieval_jax.recipes import dual_encoder
from tests import multiprocess
from tests.helpers import restore_towers
from tests import mp_search_worker

STEPS = 4
SMOKE = ["--config=configs/dpr.py:smoke", "--config.optim.name=sgd", "--config.optim.lr=0.05",
         f"--config.train.num_steps={STEPS}", "--config.train.log_every_steps=1",
         "--config.train.checkpoint_every_steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs of the smoke run on 2 processes x 4 devices and on 1 process x 8 devices."""
  root = tmp_path_factory.mktemp("multiprocess")
  two = multiprocess.run(multiprocess.main_py(*SMOKE, f"--workdir={root / 'two'}"), 2, 4,
                         root / "logs_two", timeout=120).check()
  one = multiprocess.run(multiprocess.main_py(*SMOKE, f"--workdir={root / 'one'}"), 1, 8,
                         root / "logs_one", timeout=120, multiprocess_flags=False).check()
  print(f"2 processes x 4 devices: {two.seconds:.1f} s; 1 process x 8 devices: "
        f"{one.seconds:.1f} s")
  return root / "two", root / "one", two


def _losses(workdir):
  lines = (workdir / "tensorboard" / "metrics.jsonl").read_text().splitlines()
  return {row["step"]: row["train/loss"] for row in map(json.loads, lines)
          if "train/loss" in row}


def _params(workdir):
  query, passage, step = restore_towers(run_config.load_config(workdir), workdir)
  return {"query": query.params, "passage": passage.params}, step


def _max_abs_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_two_processes_log_that_they_joined(runs):
  _, _, two = runs
  assert "process 0 of 2: 4 local of 8 cpu devices" in two.logs[0]
  # Process 1 logs warnings only, and prints nothing: one log and one table per job.
  assert "eval at step" in two.logs[0] and "eval at step" not in two.logs[1]
  assert "ndcg@10" in two.logs[0] and "ndcg@10" not in two.logs[1]


def test_two_processes_train_like_one(runs):
  two, one, _ = runs
  losses_two, losses_one = _losses(two), _losses(one)
  assert sorted(losses_two) == sorted(losses_one) == list(range(1, STEPS + 1))
  for step in losses_one:
    assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-5, abs=1e-5), step
  params_two, step_two = _params(two)
  params_one, step_one = _params(one)
  assert step_two == step_one == STEPS
  worst = _max_abs_difference(params_two, params_one)
  loss_gap = max(abs(losses_two[s] - losses_one[s]) for s in losses_one)
  print(f"[measured] 2x4 vs 1x8 smoke (SGD, {STEPS} steps): losses max abs {loss_gap:.1e}, "
        f"params max abs {worst:.1e}")
  assert worst <= 1e-5
  # And training moved them: the comparison is not between two untouched initialisations.
  config = run_config.load_config(one)
  start = dual_encoder.initial_tower_params(dual_encoder.model_spec(config.model),
                                            int(config.seed))
  assert _max_abs_difference(params_one["query"], start) > 1e-3


def test_checkpoint_of_two_processes_restores_and_evaluates_in_one(runs, tmp_path):
  two, one, _ = runs
  # Each run evaluated itself at the end; the 2-process one searched a corpus shard per process.
  own_two = json.loads((two / "eval" / f"step_{STEPS}" / "dev" / "metrics.json").read_text())
  own_one = json.loads((one / "eval" / f"step_{STEPS}" / "dev" / "metrics.json").read_text())
  assert own_two == pytest.approx(own_one, abs=1e-6)
  # This (1-process, 8-device) test restores the checkpoint the 2 processes wrote.
  result = recipes.evaluate(run_config.load_config(two), two, out_root=tmp_path)
  assert result["step"] == STEPS
  assert {k: result["metrics"][f"dev/{k}"] for k in own_one} == pytest.approx(own_one, abs=1e-6)
  assert (tmp_path / "dev" / "run.trec").exists()
  # The export was written once (process 0) from parameters gathered over both processes.
  assert (two / "export" / "query_encoder" / "model.safetensors").exists()


def test_two_processes_evaluate_a_one_process_checkpoint(runs, tmp_path):
  """`main.py --mode=eval` on 2 processes: the checkpoint of the 1-process run is restored onto
  both, each encodes and searches half of the corpus, and the metrics are the same."""
  _, one, _ = runs
  evaluation = tmp_path / "workdir"
  # A copy of the run's directory, so the 2-process evaluation writes its own files.
  shutil.copytree(one, evaluation)
  shutil.rmtree(evaluation / "eval")
  multiprocess.run(multiprocess.main_py(*SMOKE, f"--workdir={evaluation}", "--mode=eval"), 2, 4,
                   tmp_path / "logs", timeout=90).check()
  own_one = json.loads((one / "eval" / f"step_{STEPS}" / "dev" / "metrics.json").read_text())
  again = json.loads((evaluation / "eval" / f"step_{STEPS}" / "dev" / "metrics.json").read_text())
  assert again == pytest.approx(own_one, abs=1e-6)


@pytest.mark.slow  # two 2-process jobs: minutes
def test_sigterm_on_one_process_of_two_on_a_gcs_workdir(runs, tmp_path, gcs_server, gcs_bucket):
  """Preemption of a pod, on a bucket: process 1 alone receives SIGTERM after step 1; both
  save the same step to gs:// and exit 143; the same command resumes and trains like the
  uninterrupted run; a 1-process job restores the bucket's checkpoint and evaluates it."""
  two, _, _ = runs
  workdir = f"{gcs_bucket}/run"
  stopped = multiprocess.run(
      [sys.executable, str(multiprocess.REPO / "tests" / "preempt_main.py"),
       "--sigterm_at_step=1", "--sigterm_process=1", *SMOKE, f"--workdir={workdir}"],
      2, 4, tmp_path / "logs_stopped", timeout=240, ok_codes=(preemption.EXIT_CODE,),
      env=gcs_server.environment())
  assert stopped.returncodes == [preemption.EXIT_CODE] * 2, stopped.logs[0][-3000:]
  saved = [re.search(r"checkpoint of step (\d+) saved in ([\d.]+) s", log) for log in stopped.logs]
  assert all(saved), [log[-2000:] for log in stopped.logs]
  steps = {int(match.group(1)) for match in saved}
  (step,) = steps  # the same step on both processes
  assert 1 <= step < STEPS
  print(f"[measured] 2x4 on gs://, SIGTERM to process 1 after step 1: both saved step {step} "
        f"in {float(saved[0].group(2)):.1f} s")
  objects = gcs_server.list_objects(gcs_bucket[len("gs://"):], f"run/checkpoints/{step}/")
  assert any("/state/" in name for name in objects)

  multiprocess.run(multiprocess.main_py(*SMOKE, f"--workdir={workdir}"), 2, 4,
                   tmp_path / "logs_resumed", timeout=240, env=gcs_server.environment()).check()
  resumed, resumed_step = _params(workdir)
  uninterrupted, _ = _params(two)
  assert resumed_step == STEPS
  worst = _max_abs_difference(resumed, uninterrupted)
  print(f"[measured] preempted at {step} and resumed vs uninterrupted (2x4): params max abs "
        f"{worst:.1e}")
  assert worst <= 1e-6
  result = recipes.evaluate(run_config.load_config(workdir), workdir, out_root=tmp_path / "eval")
  own = json.loads((two / "eval" / f"step_{STEPS}" / "dev" / "metrics.json").read_text())
  assert result["step"] == STEPS
  assert {k: result["metrics"][f"dev/{k}"] for k in own} == pytest.approx(own, abs=1e-6)


def test_sharded_search_across_two_processes_equals_one_process(tmp_path):
  out = tmp_path / "search.npz"
  multiprocess.run([sys.executable, str(pathlib.Path(mp_search_worker.__file__)), str(out)], 2,
                   4, tmp_path / "logs", timeout=90).check()
  found = np.load(out)
  assert int(found["processes"]) == 2 and 0 < found["shard"][1] < 700
  corpus, queries, doc_of = mp_search_worker.corpus_and_queries()
  scores, rows = exact_search(queries, corpus, 20)
  np.testing.assert_array_equal(found["exact_rows"], rows)
  np.testing.assert_allclose(found["exact_scores"], scores, rtol=1e-6)
  # Tied copies (rows 650.. equal rows 0..49) are ranked lower row first, as in one process.
  assert (np.isin(rows, np.arange(50)) | np.isin(rows, np.arange(650, 700))).any()
  np.testing.assert_array_equal(found["scann_rows"], rows)
  per_doc = int(np.bincount(doc_of).max())
  passage_scores, passage_rows = exact_search(queries, corpus, 20 * per_doc)
  doc_scores, doc_rows = maxp.max_over_passages(passage_scores, passage_rows, doc_of, 20)
  np.testing.assert_array_equal(found["maxp_rows"], doc_rows)
  np.testing.assert_allclose(found["maxp_scores"], doc_scores, rtol=1e-6)


# Mean pooling: the random model's CLS vectors are nearly equal for every text, so its
# rankings would be decided by rounding, which two processes may do differently.
ANCE_SYNC = ["--config=configs/ance.py:smoke", "--config.model.pooling=mean",
             "--config.negatives.refresh_mode=sync",
             "--config.optim.name=sgd", "--config.optim.lr=0.05", "--config.train.num_steps=4",
             "--config.train.log_every_steps=1", "--config.train.export=False"]


def _negatives_in_use(workdir):
  with checkpoint.Checkpointer(workdir, async_save=False) as ckpt:
    return ckpt.restore_host(ckpt.latest_step())


def test_ance_mines_across_two_processes_like_one(tmp_path):
  """Sync refreshes on 2 processes: each encodes and searches half of the corpus, the top lists
  are merged, and the pool equals the one process's."""
  two = multiprocess.run(multiprocess.main_py(*ANCE_SYNC, f"--workdir={tmp_path / 'two'}"), 2,
                         4, tmp_path / "logs_two", timeout=150).check()
  multiprocess.run(multiprocess.main_py(*ANCE_SYNC, f"--workdir={tmp_path / 'one'}"), 1, 8,
                   tmp_path / "logs_one", timeout=150, multiprocess_flags=False).check()
  assert "negatives mined at step 2 in use after step 2" in two.logs[0]
  pool_two, pool_one = _negatives_in_use(tmp_path / "two"), _negatives_in_use(tmp_path / "one")
  assert int(pool_two["snapshot_step"]) == int(pool_one["snapshot_step"]) == 2
  np.testing.assert_array_equal(pool_two["counts"], pool_one["counts"])
  # The same candidates per query. Near-equal scores of this random model may swap places,
  # and at the pool's cut-off swap the last candidate with the first one left out: all but
  # each pool's last candidate must be in the other pool, and few pools may differ at all.
  differ = 0
  for a, b, count in zip(pool_two["candidates"], pool_one["candidates"], pool_one["counts"]):
    assert set(a[:count - 1]) <= set(b[:count]) and set(b[:count - 1]) <= set(a[:count]), (a, b)
    differ += set(a[:count]) != set(b[:count])
  print(f"[measured] pools that differ at the cut-off: {differ} of {len(pool_one['counts'])}")
  assert differ <= max(1, len(pool_one["counts"]) // 20), differ
  losses_two, losses_one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
  for step in losses_one:
    assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-4), step


def test_ance_refreshes_in_the_background_on_two_processes(tmp_path):
  """Async refreshes on 2 processes: each mines its shard in a background thread, and the new
  negatives are merged and installed at a step all processes agree on."""
  async_smoke = ["--config=configs/ance.py:smoke", "--config.train.export=False",
                 f"--workdir={tmp_path / 'two'}"]
  two = multiprocess.run(multiprocess.main_py(*async_smoke), 2, 4, tmp_path / "logs",
                         timeout=150).check()
  assert "mining negatives with the parameters of step 2 in the background" in two.logs[0]
  assert "negatives mined at step 2 in use after step" in two.logs[0]
  pool = _negatives_in_use(tmp_path / "two")
  assert int(pool["snapshot_step"]) in (2, 4)
  assert (pool["counts"] > 0).all()
