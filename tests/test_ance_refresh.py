"""Tests for retrieval_jax.recipes.ance_refresh: schedule, sync and async swaps, resume, errors.

The mining function is a stand-in (no encoder): it returns a pool whose every candidate is the
snapshot step, so the set in use shows which parameters mined it. Asynchronous timing is made
deterministic with events: the "mining" blocks until the test lets it finish.
"""

from __future__ import annotations

import dataclasses
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from retrieval_jax.recipes import ance_refresh as negative_refresh
from retrieval_jax.index import mining

NUM_QUERIES, NUM_DOCS = 4, 100


def _pool(row: int) -> mining.NegativePool:
  return mining.NegativePool(
      query_ids=[f"q{i}" for i in range(NUM_QUERIES)],
      candidates=np.full((NUM_QUERIES, 3), row, np.int64), counts=np.full(NUM_QUERIES, 3),
      positives=np.arange(NUM_QUERIES, dtype=np.int64)[:, None] + 90, num_docs=NUM_DOCS)


def _initial() -> negative_refresh.MinedNegatives:
  return negative_refresh.MinedNegatives(_pool(50), negative_refresh.NOT_MINED, "bm25", 1, 0,
                                         None, np.arange(NUM_QUERIES))


class FakeMiner:
  """Mines pool(row = snapshot step); optionally waits for `release` before returning."""

  def __init__(self, gated: bool = False):
    self.calls: list[int] = []
    self.params_seen: list[float] = []
    self.gated = gated
    self.release = threading.Event()
    self.started = threading.Event()

  def __call__(self, params, step):
    self.calls.append(step)
    self.params_seen.append(float(params["w"]))
    self.started.set()
    if self.gated:
      assert self.release.wait(10), "the test never released the miner"
    return _pool(step)


def _state(value: float) -> dict:
  return {"params": {"w": jnp.float32(value)}}


def _refresher(miner, mode: str, every: int, total_steps: int = 20):
  return negative_refresh.NegativeRefresher(miner, _initial, every=every,
                                            total_steps=total_steps, mode=mode)


def _rows(refresher) -> int:
  return int(refresher.current().for_epoch(0)[0, 0])


def test_refresh_steps():
  assert negative_refresh.refresh_steps(10, 35) == [10, 20, 30]
  assert negative_refresh.refresh_steps(10, 30) == [10, 20]  # none at the last step
  assert negative_refresh.refresh_steps(30, 76, first=20) == [20, 50]
  assert negative_refresh.refresh_steps(0, 100) == []


def test_sync_mode_installs_before_the_next_step():
  miner = FakeMiner()
  refresher = _refresher(miner, "sync", every=3, total_steps=10)
  refresher.start(0, _state(0.0), None)
  used = []
  for step in range(1, 11):
    used.append(_rows(refresher))  # the negatives batch `step - 1` trains on
    refresher.after_step(step, _state(float(step)))
  # BM25 (row 50) for steps 1-3, then the set mined at step 3 from step 4, and so on.
  assert used == [50, 50, 50, 3, 3, 3, 6, 6, 6, 9]
  assert miner.calls == [3, 6, 9] and miner.params_seen == [3.0, 6.0, 9.0]
  summary = refresher.finish()["negative_refresh"]
  assert [r["steps_during"] for r in summary["refreshes"]] == [0, 0, 0]
  table = negative_refresh.format_summary(summary)
  assert table.count("\n") == 5 and "trainer waited" in table
  assert summary["waited_s"] == pytest.approx(sum(r["wall_s"] for r in summary["refreshes"]))


def test_async_mode_trains_on_while_mining_then_swaps_between_steps():
  miner = FakeMiner(gated=True)
  refresher = _refresher(miner, "async", every=2, total_steps=20)
  refresher.start(0, _state(0.0), None)
  refresher.after_step(1, _state(1.0))
  refresher.after_step(2, _state(2.0))  # starts mining with the step-2 parameters
  assert miner.started.wait(10)
  refresher.after_step(3, _state(3.0))
  assert _rows(refresher) == 50 and refresher.scalars(3)["negatives/refreshing"] == 1.0
  miner.release.set()
  refresher._pending[1].result(timeout=10)  # pylint: disable=protected-access
  assert _rows(refresher) == 50  # ready, but only installed at a step boundary
  miner.gated = False
  refresher.after_step(4, _state(4.0))  # installs step 2's set, then starts the step-4 one
  summary = refresher.finish()["negative_refresh"]
  assert summary["unused_refreshes"] == [4]  # still running when training ended
  first = summary["refreshes"][0]
  assert (first["snapshot_step"], first["installed_at_step"], first["steps_during"]) == (2, 4, 2)
  assert first["waited_s"] == 0.0
  assert miner.params_seen[0] == 2.0  # the snapshot, not the parameters of later steps
  scalars = refresher.scalars(5)
  assert scalars["negatives/snapshot_step"] == 2.0 and scalars["negatives/staleness"] == 3.0


def test_async_waits_when_the_previous_refresh_is_still_running():
  miner = FakeMiner(gated=True)
  refresher = _refresher(miner, "async", every=2, total_steps=20)
  refresher.start(0, _state(0.0), None)
  refresher.after_step(2, _state(2.0))
  assert miner.started.wait(10)
  threading.Timer(0.3, miner.release.set).start()
  refresher.after_step(4, _state(4.0))  # blocks until step 2's refresh is done, installs it
  assert _rows(refresher) == 2
  assert refresher.waited_s >= 0.2
  refresher.finish()


def test_the_snapshot_survives_a_donating_step():
  """The refresh encodes with a copy: deleting the live params (as donation does) is safe."""
  params = {"w": jnp.arange(4.0)}
  copy = negative_refresh.snapshot(params)
  params["w"].delete()
  np.testing.assert_array_equal(np.asarray(copy["w"]), np.arange(4.0))


def test_a_mining_error_stops_training():
  def failing(params, step):
    raise RuntimeError("scann exploded")

  refresher = _refresher(failing, "async", every=1, total_steps=5)
  refresher.start(0, _state(0.0), None)
  refresher.after_step(1, _state(1.0))
  with pytest.raises(RuntimeError, match="scann exploded"):
    refresher.after_step(2, _state(2.0))  # waits for step 1's refresh: its error surfaces
  refresher.close()


def test_resume_uses_the_saved_set_and_redoes_an_unfinished_refresh():
  miner = FakeMiner()
  first = _refresher(miner, "sync", every=4, total_steps=20)
  first.start(0, _state(0.0), None)
  for step in range(1, 6):
    first.after_step(step, _state(float(step)))
  extra, host = first.checkpoint_payload()
  assert extra["negatives"] == {"snapshot_step": 4, "source": "ann", "refreshing": False}
  # Resumed at step 5: continues on the saved set, mines nothing.
  resumed = _refresher(miner, "sync", every=4, total_steps=20)
  resumed.start(5, _state(5.0), host)
  assert _rows(resumed) == 4 and miner.calls == [4]
  np.testing.assert_array_equal(resumed.current().pool.candidates, host["candidates"])
  # A checkpoint of step 9 holding the step-4 set: the step-8 refresh was lost; redo it now.
  late = _refresher(miner, "async", every=4, total_steps=20)
  late.start(9, _state(9.0), host)
  late.finish()
  assert miner.calls == [4, 9]
  # In sync mode the lost refresh is mined before training continues.
  late_sync = _refresher(miner, "sync", every=4, total_steps=20)
  late_sync.start(9, _state(9.0), host)
  assert miner.calls == [4, 9, 9] and _rows(late_sync) == 9


def test_saved_negatives_of_other_data_are_rejected():
  host = negative_refresh.MinedNegatives(_pool(1), 3, "ann", 1, 0, None,
                                         np.arange(NUM_QUERIES)).to_host()
  host["positives"] = host["positives"] + 1
  refresher = _refresher(FakeMiner(), "sync", every=4, total_steps=20)
  with pytest.raises(ValueError, match="data"):
    refresher.start(5, _state(5.0), host)


def test_positives_are_never_drawn():
  # One candidate per query and two negatives asked: the second comes from the random fill,
  # which must avoid each query's positive (rows 90-93 of 100).
  pool = dataclasses.replace(_pool(7), counts=np.ones(NUM_QUERIES, np.int64))
  negatives = negative_refresh.MinedNegatives(pool, 3, "ann", 2, 0, None, np.arange(NUM_QUERIES))
  for epoch in range(100):  # 400 fills of 1 in 99: a fill ignoring positives would hit one
    drawn = negatives.for_epoch(epoch)
    assert np.all(drawn[:, 0] == 7)
    for q in range(NUM_QUERIES):
      assert not set(drawn[q]) & set(pool.positives[q])


@pytest.mark.parametrize("kwargs, key", [({"mode": "later"}, "refresh_mode"),
                                         ({"every": -1}, "refresh_every"),
                                         ({"first": 0}, "first_refresh")])
def test_bad_arguments(kwargs, key):
  args = dict(every=2, total_steps=10, mode="sync")
  args.update(kwargs)
  with pytest.raises(ValueError, match=key):
    negative_refresh.NegativeRefresher(FakeMiner(), _initial, **args)


def test_several_processes_install_only_when_all_agree():
  """The multi-host protocol: prepare and merge run in the training thread, mining in the
  background, and a finished refresh waits until `agree` says every process is done."""
  threads = {"prepare": [], "merge": []}
  peers_done = []  # what the (simulated) other process answers at each step boundary

  def prepare(params):
    threads["prepare"].append(threading.current_thread() is threading.main_thread())
    return {"w": float(params["w"])}  # host values, as distributed.host_local gives

  def merge(pool):
    threads["merge"].append(threading.current_thread() is threading.main_thread())
    return pool

  def agree(done):  # a collective: every process answers at every step while one runs
    peer = peers_done.pop(0)
    return done and peer

  miner = FakeMiner()
  refresher = negative_refresh.NegativeRefresher(
      miner, _initial, every=3, total_steps=20, mode="async", prepare=prepare, merge=merge,
      agree=agree)
  refresher.start(0, _state(0.0), None)
  refresher.after_step(3, _state(3.0))  # begins the step-3 refresh
  refresher._pending[1].result(timeout=10)  # pylint: disable=protected-access
  peers_done.extend([False, True])
  refresher.after_step(4, _state(4.0))  # done here, not yet on the other process
  assert _rows(refresher) == 50
  refresher.after_step(5, _state(5.0))  # every process done: installed, the same step on all
  assert _rows(refresher) == 3 and not peers_done
  refresher.after_step(6, _state(6.0))  # begins the step-6 refresh
  peers_done.append(False)
  refresher.after_step(7, _state(7.0))  # asked every step while it runs, done or not
  assert not peers_done and _rows(refresher) == 3
  refresher._pending[1].result(timeout=10)  # pylint: disable=protected-access
  peers_done.extend([False, False])
  refresher.after_step(8, _state(8.0))
  # A due step: every process waits for its own refresh and installs it.
  refresher.after_step(9, _state(9.0))
  assert _rows(refresher) == 6 and not peers_done
  refresher.finish()
  assert threads == {"prepare": [True, True, True], "merge": [True, True]}
  assert miner.params_seen[:2] == [3.0, 6.0]
