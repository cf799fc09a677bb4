"""ANCE's negative refresh: re-mine hard negatives with the model being trained, while it trains.

Every `every` steps the refresher snapshots the parameters, and `mine(snapshot, step)` encodes the
corpus and the training queries with them, searches (ScaNN or exact) and returns a candidate pool
(`index.mining.NegativePool`, positives removed). The pool becomes a `MinedNegatives`, the
`data.pairs.NegativeSet` the batcher draws from.

Asynchronous (the default): the mining runs in a background thread of the same process while
training continues on the previous set; the new set is installed at the first step boundary after
it is ready. Installing is one reference assignment in the training thread, between steps, and the
batcher reads the set once per batch, so no batch mixes two sets. Synchronous: the training
thread mines and installs before the next step, so a run is exactly reproducible.

On several processes (multi-host) each mines its shard of the corpus, with the parameters gathered
to every host when the refresh begins; the shards' top lists are merged in the training thread
when the refresh is installed, at a step every process agrees on (`agree`, a collective after
each step while a refresh runs), so every process trains on the same set from the same step.

The set in use and its snapshot step go into every checkpoint (`checkpoint_payload`); a resumed
run continues on them (`start`). Logged: wall time of each refresh, steps trained while it ran,
staleness (steps between the snapshot and the step that uses its negatives), and the share of the
wall time the trainer spent waiting for negatives.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from retrieval_jax.index import mining
from retrieval_jax.recipes import base

logger = logging.getLogger(__name__)

MODES = ("async", "sync")
# Snapshot step of a set the model did not mine (BM25 warm-up negatives).
NOT_MINED = -1


@dataclasses.dataclass(frozen=True, eq=False)
class MinedNegatives:
  """An immutable set of negatives (a `data.pairs.NegativeSet`): a pool and how to sample it.

  Attributes:
    pool: Candidates per query of the training split (`BeirData.query_ids` rows).
    snapshot_step: The step whose parameters mined the pool; `NOT_MINED` for BM25.
    source: `bm25` or `ann`.
    num_negatives: Negatives drawn per query and epoch.
    seed: The run's seed (draws are seeded by (seed, epoch)).
    top_k: Draw among the best `top_k` candidates (None: all).
    query_rows: The training examples' rows in `pool.query_ids` (`PairDataset.query_rows`).
  """
  pool: mining.NegativePool
  snapshot_step: int
  source: str
  num_negatives: int
  seed: int
  top_k: int | None
  query_rows: np.ndarray

  @property
  def version(self) -> int:
    """Sets are told apart by their snapshot step (one refresh per step at most)."""
    return self.snapshot_step

  def for_epoch(self, epoch: int) -> np.ndarray:
    """[num_examples, num_negatives] corpus rows drawn for `epoch` (the batcher caches them per
    epoch and set)."""
    return mining.sample_negatives(self.pool, self.num_negatives, seed=self.seed, epoch=epoch,
                                   top_k=self.top_k)[self.query_rows]

  def to_host(self) -> dict[str, np.ndarray]:
    """The arrays a checkpoint keeps (query ids are the data's; checked by `from_host`)."""
    return {"candidates": self.pool.candidates, "counts": self.pool.counts,
            "positives": self.pool.positives, "num_docs": np.int64(self.pool.num_docs),
            "snapshot_step": np.int64(self.snapshot_step)}

  def replaced(self, pool: mining.NegativePool, snapshot_step: int,
               source: str) -> MinedNegatives:
    """The same sampling with another pool."""
    return MinedNegatives(pool, snapshot_step, source, self.num_negatives, self.seed,
                          self.top_k, self.query_rows)


def pool_from_host(host: dict[str, np.ndarray], like: mining.NegativePool) -> mining.NegativePool:
  """The pool saved by `MinedNegatives.to_host`, checked against this run's data (`like`).

  Raises:
    ValueError: The checkpoint's negatives were mined on other data (a different number of
      queries or documents, or other positives).
  """
  pool = mining.NegativePool(query_ids=like.query_ids, candidates=np.asarray(host["candidates"]),
                             counts=np.asarray(host["counts"]),
                             positives=np.asarray(host["positives"]),
                             num_docs=int(host["num_docs"]))
  if (pool.candidates.shape[0] != len(like.query_ids) or pool.num_docs != like.num_docs
      or not np.array_equal(pool.positives, like.positives)):
    raise ValueError(
        f"the checkpoint's negatives ({pool.candidates.shape[0]} queries, {pool.num_docs} "
        f"documents) do not belong to this run's training data ({len(like.query_ids)} queries, "
        f"{like.num_docs} documents, or other judgements); did data.* change?")
  return pool


def refresh_steps(every: int, total_steps: int, first: int | None = None) -> list[int]:
  """The steps after which a refresh starts: `first` (default `every`), then every `every`
  steps, all before the last step (a refresh there could not be used)."""
  if every <= 0:
    return []
  first = every if first is None else first
  return list(range(max(first, 1), total_steps, every))


def snapshot(params: Any) -> Any:
  """A device copy of `params` that the next (donating) step cannot overwrite."""
  return jax.tree_util.tree_map(jnp.copy, params)


@dataclasses.dataclass
class RefreshRecord:
  """What one refresh did (logged, and returned in the run's summary)."""
  snapshot_step: int
  installed_at_step: int
  wall_s: float
  steps_during: int   # steps trained while it ran (0 in sync mode)
  waited_s: float     # how long the trainer blocked on it


class NegativeRefresher(base.Hook):
  """Owns the negative set in use and the refreshes that replace it (see the module docstring).

  The training loop calls `start` once, `after_step` after every step, `scalars` at log points,
  `checkpoint_payload` at saves and `finish` at the end; the batcher calls `current`.
  """

  def __init__(self, mine: Callable[[Any, int], Any],
               initial: Callable[[], MinedNegatives], *, every: int, total_steps: int,
               mode: str = "async", first: int | None = None, mine_at_start: bool = False,
               prepare: Callable[[Any], Any] | None = None,
               merge: Callable[[Any], mining.NegativePool] | None = None,
               agree: Callable[[bool], bool] | None = None, refresh_mesh: Any = None):
    """Sets the schedule; nothing is mined before `start`.

    Several processes (multi-host) split a refresh in three: `prepare` (the training thread:
    gather the parameters to every host), `mine` (any thread: each process its shard, no
    communication), `merge` (the training thread: merge the shards). An asynchronous
    refresh is installed when `agree` says every process's `mine` is done, at the same step
    on every process, since `agree` and `merge` are collectives.

    Args:
      mine: (prepared params, step) -> pool, or what `merge` takes; runs in a background
        thread in async mode, so it must not communicate with other processes.
      initial: () -> the set to train on before the first refresh (BM25 warm-up negatives);
        called by `start` on a fresh run only.
      every: Refresh after every `every` steps (`negatives.refresh_every`); 0: never.
      total_steps: The run's length; no refresh starts at or after it.
      mode: `async` or `sync` (`negatives.refresh_mode`).
      first: The step of the first refresh (`negatives.first_refresh`): the BM25 warm-up
        lasts this long; None: `every`.
      mine_at_start: Mine with the initial parameters before step 1 (instead of training the
        first `every` steps on `initial`'s negatives).
      prepare: params -> what `mine` encodes with, called in the training thread when a
        refresh begins; default: a device copy (`snapshot`) in async mode, the params in sync.
      merge: `mine`'s result -> the pool, in the training thread when it is installed;
        default: `mine` returned the pool.
      agree: this process's "my refresh is done" -> whether every process's is; called in
        the training thread after every step while a refresh runs; default: the flag itself.
      refresh_mesh: The devices `mine` runs on when they are set aside from training
      (`mesh.refresh_devices`); None: the training devices. Reported by `finish`.
    """
    if mode not in MODES:
      raise ValueError(f"negatives.refresh_mode={mode!r} must be one of {MODES}")
    if every < 0:
      raise ValueError(f"negatives.refresh_every={every} must be >= 0 (0: never refresh)")
    if first is not None and first < 1:
      raise ValueError(f"negatives.first_refresh={first} must be >= 1 (or None: refresh_every)")
    self._mine = mine
    self._prepare = prepare or (snapshot if mode == "async" else (lambda params: params))
    self._merge = merge or (lambda pool: pool)
    self._agree = agree or (lambda done: done)
    self._initial = initial
    self.schedule = refresh_steps(every, total_steps, first)
    self._due = frozenset(self.schedule)
    self.mode = mode
    self.mine_at_start = mine_at_start
    self.refresh_mesh = refresh_mesh
    self._current: MinedNegatives | None = None
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self._pending: tuple[int, concurrent.futures.Future] | None = None  # (snapshot step, job)
    self.records: list[RefreshRecord] = []
    self.waited_s = 0.0
    self._started_at = time.perf_counter()

  def current(self) -> MinedNegatives:
    """The set in use (the batcher's `negative_sets`)."""
    if self._current is None:
      raise RuntimeError("NegativeRefresher.start was not called")
    return self._current

  # --- the training loop's side -------------------------------------------------------------

  def start(self, step: int, state: dict, host: dict[str, np.ndarray] | None) -> None:
    """Before the first step of this invocation: the saved set on resume, else the initial one.

    Args:
      step: The step training resumes from (0: a fresh run).
      state: The train state (`state["params"]` is what refreshes encode with).
      host: The host arrays of the restored checkpoint (None: a fresh run, or no set saved).
    """
    self._started_at = time.perf_counter()
    initial = self._initial()
    if host is not None and "snapshot_step" in host:
      pool = pool_from_host(host, initial.pool)
      snapshot_step = int(host["snapshot_step"])
      self._current = initial.replaced(pool, snapshot_step,
                                       "bm25" if snapshot_step == NOT_MINED else "ann")
      logger.info("resumed on the negatives mined at step %s", snapshot_step)
    else:
      self._current = initial
    due = [s for s in self.schedule if s <= step]
    if step == 0 and self.mine_at_start:
      self._refresh_now(0, state["params"], installed_at=0)
    elif due and self._current.snapshot_step < due[-1]:
      # Resumed after a refresh had started but before it was installed: redo it now.
      logger.info("the refresh of step %d was not installed before the checkpoint: mining now",
                  due[-1])
      self._begin(step, state["params"])

  def after_step(self, step: int, state: dict) -> None:
    """Between steps `step` and `step + 1`: install a finished refresh, start a due one."""
    if self._pending is not None and self._agree(self._pending[1].done()):
      self._install(step)
    if step not in self._due:
      return
    if self._pending is not None:
      # The previous refresh is still running: wait for it rather than pile up snapshots.
      began = time.perf_counter()
      concurrent.futures.wait([self._pending[1]])
      waited = time.perf_counter() - began
      self.waited_s += waited
      self._install(step, waited_s=waited)
    self._begin(step, state["params"])

  def scalars(self, step: int) -> dict[str, float]:
    """Facts for the log at `step`."""
    current = self.current()
    values = {"negatives/snapshot_step": float(current.snapshot_step),
              "negatives/refreshing": float(self._pending is not None)}
    if current.snapshot_step != NOT_MINED:
      values["negatives/staleness"] = float(step - current.snapshot_step)
    return values

  def checkpoint_payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON facts, host arrays) of the set in use, saved with every checkpoint."""
    current = self.current()
    return ({"negatives": {"snapshot_step": current.snapshot_step, "source": current.source,
                           "refreshing": self._pending is not None}},
            current.to_host())

  def finish(self) -> dict[str, Any]:
    """Waits for a refresh still running (its result is not used) and summarises the run."""
    unused = []
    if self._pending is not None:
      step, future = self._pending
      logger.info("the refresh of step %d finished after training ended: not used", step)
      self._pending = None
      future.result()
      unused.append(step)
    self.close()
    wall = time.perf_counter() - self._started_at
    return {"negative_refresh": {
        "mode": self.mode, "refreshes": [dataclasses.asdict(r) for r in self.records],
        "refresh_devices": (None if self.refresh_mesh is None
                            else [d.id for d in self.refresh_mesh.devices.flat]),
        "unused_refreshes": unused,
        "waited_s": self.waited_s, "wall_s": wall,
        "waited_fraction": self.waited_s / wall if wall > 0 else 0.0}}

  def close(self) -> None:
    """Stops the background thread (after its current job)."""
    if self._executor is not None:
      self._executor.shutdown(wait=True)
      self._executor = None

  # --- internals ----------------------------------------------------------------------------

  def _timed_mine(self, params: Any, step: int) -> tuple[Any, float]:
    began = time.perf_counter()
    mined = self._mine(params, step)
    return mined, time.perf_counter() - began

  def _begin(self, step: int, params: Any) -> None:
    """A refresh with the parameters of `step`: mined now (sync) or in the background."""
    if self.mode == "sync":
      self._refresh_now(step, params, installed_at=step)
    else:
      self._launch(step, params)

  def _refresh_now(self, step: int, params: Any, installed_at: int) -> None:
    began = time.perf_counter()
    pool = self._merge(self._mine(self._prepare(params), step))
    wall = time.perf_counter() - began
    self.waited_s += wall
    self._set(pool, step, installed_at, wall, waited_s=wall)

  def _launch(self, step: int, params: Any) -> None:
    if self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ann_refresh")
    logger.info("refresh: mining negatives with the parameters of step %d in the background",
                step)
    self._pending = (step, self._executor.submit(self._timed_mine, self._prepare(params), step))

  def _install(self, step: int, waited_s: float = 0.0) -> None:
    snapshot_step, future = self._pending
    self._pending = None
    mined, wall = future.result()  # re-raises an error of the mining thread here
    self._set(self._merge(mined), snapshot_step, step, wall, waited_s)

  def _set(self, pool, snapshot_step: int, installed_at: int, wall: float,
           waited_s: float) -> None:
    self._current = self.current().replaced(pool, snapshot_step, "ann")
    record = RefreshRecord(snapshot_step=snapshot_step, installed_at_step=installed_at,
                           wall_s=wall, steps_during=installed_at - snapshot_step,
                           waited_s=waited_s)
    self.records.append(record)
    logger.info("refresh: negatives mined at step %d in use after step %d (%.1f s, %d steps "
                "trained meanwhile, trainer waited %.1f s)", snapshot_step, installed_at, wall,
                record.steps_during, waited_s)


  def report(self, info: dict[str, Any]) -> str | None:
    """The refresh table of the run, for the console."""
    summary = info.get("negative_refresh")
    return format_summary(summary) if summary else None


def format_summary(summary: dict[str, Any]) -> str:
  """A text table of `NegativeRefresher.finish()["negative_refresh"]`, for the console."""
  lines = [f"negative refreshes ({summary['mode']}):",
           "snapshot step  in use after  wall s  steps meanwhile  trainer waited s"]
  for r in summary["refreshes"]:
    lines.append(f"{r['snapshot_step']:>13}  {r['installed_at_step']:>12}  {r['wall_s']:>6.1f}  "
                 f"{r['steps_during']:>15}  {r['waited_s']:>16.1f}")
  for step in summary.get("unused_refreshes", []):
    lines.append(f"{step:>13}  not used: still mining when training ended")
  lines.append(f"trainer waited {summary['waited_s']:.1f} s of {summary['wall_s']:.1f} s "
               f"({100 * summary['waited_fraction']:.1f}%)")
  return "\n".join(lines)
