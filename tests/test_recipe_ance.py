"""ANCE end to end on `configs/ance.py:smoke` (tiny random encoder, synthetic data, 6 steps).

Covers: refreshes run (async and sync) and are logged; the negatives in use are saved in every
checkpoint and a resumed run continues on them (sync mode: bit-identical to an uninterrupted
run, and nothing is re-mined on resume); positives never appear among mined negatives, with or
without the false-negative margin; MaxP trains on [B, G, N, L] passages; `eval/retrieval.py`
evaluates an ANCE workdir with ScaNN and with exact search; invalid ANCE keys are rejected
before compiling.
"""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from retrieval_jax import checkpoint, metric_writer, run_config, sharding, train
from retrieval_jax.data import pairs
from retrieval_jax.index import mining
from retrieval_jax.recipes import ance, contrastive

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import ance as ance_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import (  # pylint: disable=wrong-import-position
    restore_towers,
    assert_rejected_before_compiling, run_python, with_overrides)


def _smoke(**overrides):
  return with_overrides(ance_config.get_config("smoke"), overrides)


def _params(workdir, step=None):
  config = run_config.load_config(workdir)
  query, _, step = restore_towers(config, workdir, step)
  return step, jax.tree_util.tree_map(np.asarray, query.params)


def _host(workdir, step):
  with checkpoint.Checkpointer(workdir) as ckpt:
    return ckpt.restore_host(step)


@pytest.fixture(scope="module")
def async_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ance_async")
  return workdir, train.run(_smoke(), workdir, "train_and_eval")


def test_async_run_refreshes_logs_and_saves_its_negatives(async_run):
  workdir, summary = async_run
  assert summary["step"] == 6 and 0.0 <= summary["eval"]["dev/ndcg@10"] <= 1.0
  refresh = summary["info"]["negative_refresh"]
  assert refresh["mode"] == "async" and summary["info"]["refresh_steps"] == [2, 4]
  # Each refresh either was installed (at or after its snapshot step) or ran past the end.
  installed = [r["snapshot_step"] for r in refresh["refreshes"]]
  assert sorted(installed + refresh["unused_refreshes"]) == [2, 4]
  for record in refresh["refreshes"]:
    assert record["installed_at_step"] >= record["snapshot_step"]
    assert record["steps_during"] == record["installed_at_step"] - record["snapshot_step"]
  assert 0.0 <= refresh["waited_fraction"] < 1.0
  scalars = metric_writer.read_scalars(workdir / "tensorboard")
  assert "negatives/snapshot_step" in scalars and "negatives/refreshing" in scalars
  # Every checkpoint holds the negatives in use and their snapshot step.
  for step in checkpoint.Checkpointer(workdir).all_steps():
    host = _host(workdir, step)
    assert host is not None and int(host["snapshot_step"]) in (-1, 2, 4)


def test_positives_are_never_mined_as_negatives(async_run, tmp_path):
  workdir, _ = async_run
  config = run_config.load_config(workdir)
  data = contrastive.load_split(config.data, config.data.train_split)
  positives = [set(np.flatnonzero(np.isin(data.corpus_ids, [d for d, r in
                                                            data.qrels.get(q, {}).items()
                                                            if r > 0])))
               for q in data.query_ids]
  saved = _host(workdir, checkpoint.Checkpointer(workdir).latest_step())
  # A pool mined with a margin, from random embeddings: positives still excluded.
  rng = np.random.default_rng(0)
  query_emb = rng.normal(size=(len(data.query_ids), 8)).astype(np.float32)
  corpus_emb = rng.normal(size=(len(data.corpus_ids), 8)).astype(np.float32)
  margined = mining.dense_negative_pool(query_emb, corpus_emb, data, depth=20, index="exact",
                                        false_negative_margin=0.5)
  plain = mining.dense_negative_pool(query_emb, corpus_emb, data, depth=20, index="exact")
  assert margined.counts.sum() < plain.counts.sum()  # the margin dropped some candidates
  for candidates, counts in ((saved["candidates"], saved["counts"]),
                             (margined.candidates, margined.counts)):
    for q, row in enumerate(candidates):
      assert not set(row[:counts[q]].tolist()) & positives[q]
    # ...and neither are the negatives drawn from the pool, every epoch.
    pool = mining.NegativePool(list(data.query_ids), candidates, counts,
                               margined.positives, len(data.corpus_ids))
    for epoch in range(3):
      drawn = mining.sample_negatives(pool, 3, seed=0, epoch=epoch)
      for q, row in enumerate(drawn):
        assert not set(row.tolist()) & positives[q]


def test_sync_resume_continues_on_the_saved_negatives(tmp_path, monkeypatch):
  mined_at = []
  real_mine = ance.mine_shard

  def counting_mine(params, step, **kwargs):
    mined_at.append(step)
    return real_mine(params, step, **kwargs)

  monkeypatch.setattr(ance, "mine_shard", counting_mine)
  sync = {"negatives.refresh_mode": "sync"}
  straight = train.run(_smoke(**sync), tmp_path / "straight", "train")
  assert mined_at == [2, 4]
  assert [r["steps_during"] for r in straight["info"]["negative_refresh"]["refreshes"]] == [0, 0]

  interrupted = tmp_path / "interrupted"
  train.run(_smoke(**sync, **{"train.stop_at_step": 3}), interrupted, "train")
  host = _host(interrupted, 3)
  assert int(host["snapshot_step"]) == 2
  config = _smoke()
  bm25 = contrastive.negative_pool(config, contrastive.load_split(config.data, config.data.train_split),
                           interrupted, depth=config.negatives.bm25_depth)
  assert not np.array_equal(host["candidates"], bm25.candidates)  # the test can tell them apart
  del mined_at[:]
  train.run(_smoke(**sync), interrupted, "train")
  assert mined_at == [4]  # resumed on the saved step-2 negatives, mined only the step-4 refresh
  (_, resumed), (_, uninterrupted) = _params(interrupted), _params(tmp_path / "straight")
  worst = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(uninterrupted)))
  print(f"[measured] ANCE sync resume 3 -> 6 vs straight: params max abs diff {worst:.1e}")
  assert worst <= 1e-6


def test_maxp_trains_on_documents_split_into_passages(tmp_path):
  config = _smoke(**{"data.max_passages": 2, "evals.dev.max_passages": 2, "train.num_steps": 3,
                     "negatives.refresh_mode": "sync", "train.passage_max_length": 16})
  mesh = sharding.mesh_from_config(config)
  recipe = ance.build(config, tmp_path, mesh)
  recipe.hooks[0].start(0, recipe.init_state(), None)
  batch = recipe.batcher.batch(0)
  assert batch["passage_input_ids"].shape[:3] == (8, 2, 2)
  # Every document has a first passage; the longer ones a second.
  assert batch["passage_attention_mask"][:, :, 0, 0].all()
  assert batch["passage_attention_mask"][:, :, 1, 0].any()
  summary = train.run(config, tmp_path, "train_and_eval")
  assert summary["step"] == 3 and np.isfinite(summary["train"]["loss"])
  assert json.loads((tmp_path / "eval" / "step_3" / "dev" / "metrics.json").read_text())[
      "num_passages"] > 0




def test_eval_cli_on_an_ance_workdir_with_scann_and_exact(async_run, tmp_path):
  workdir, summary = async_run
  metrics = {}
  for index in ("exact", "scann"):
    out = tmp_path / index
    result = run_python(["eval/retrieval.py", f"--model={workdir}", "--data=synthetic",
                      "--split=dev", "--max_length=32", "--metrics=ndcg@10,recall@10",
                      "--depth=10", f"--index={index}", f"--out={out}", "--noprogress"])
    assert "step 6" in result.stdout
    metrics[index] = json.loads((out / "metrics.json").read_text())
  # 96 documents: ScaNN searches them exhaustively, so both give the final evaluation.
  for index in ("exact", "scann"):
    assert metrics[index]["ndcg@10"] == pytest.approx(summary["eval"]["dev/ndcg@10"], abs=1e-5)


@pytest.mark.parametrize("overrides, key", [
    ({"negatives.source": "bm25"}, "negatives.source"),
    ({"negatives.index": "faiss"}, "negatives.index"),
    ({"negatives.refresh_mode": "later"}, "negatives.refresh_mode"),
    ({"negatives.num": 0}, "negatives.num"),
    ({"negatives.first_refresh": 0}, "negatives.first_refresh"),
    ({"loss.in_batch": False, "loss.symmetric": True}, "loss.symmetric"),
    ({"data.max_passages": 0}, "data.max_passages"),
])
def test_invalid_config_fails_before_compiling(tmp_path, monkeypatch, overrides, key):
  assert_rejected_before_compiling(_smoke(**overrides), tmp_path, key, monkeypatch)


def test_batches_record_the_negative_set_they_came_from(tmp_path):
  config = _smoke(**{"negatives.refresh_mode": "sync"})
  recipe = ance.build(config, tmp_path, sharding.mesh_from_config(config))
  refresher = recipe.hooks[0]
  state = recipe.init_state()
  refresher.start(0, state, None)
  assert isinstance(recipe.batcher, pairs.PairBatcher)
  versions = []
  for step, batch in recipe.batcher.iterate(0, 5):
    versions.append(int(batch["negatives_version"]))
    refresher.after_step(step + 1, state)
  assert versions == [-1, -1, 2, 2, 4]
  refresher.close()



def _mined_at_start(config, workdir, mesh):
  recipe = ance.build(config, workdir, mesh)
  refresher = recipe.hooks[0]
  state = recipe.init_state()
  refresher.start(0, state, None)
  refresher.close()
  return refresher, state, refresher.current().pool


def test_refresh_on_devices_set_aside_mines_the_same_negatives(tmp_path, monkeypatch):
  """8 devices: 4 train, 4 mine; the same pool as mining on the 4 training devices."""
  assert jax.device_count() == 8
  base = {"negatives.refresh_mode": "sync", "negatives.mine_at_start": True}
  config = _smoke(**base, **{"mesh.refresh_devices": 4})
  mesh = sharding.mesh_from_config(config)
  assert [d.id for d in mesh.devices.flat] == [0, 1, 2, 3]
  refresher, state, aside = _mined_at_start(config, tmp_path / "aside", mesh)
  assert [d.id for d in refresher.refresh_mesh.devices.flat] == [4, 5, 6, 7]
  train_devices = set(mesh.devices.flat)
  assert all(leaf.sharding.device_set == train_devices
             for leaf in jax.tree_util.tree_leaves(state["params"]))
  # The same initial parameters mined on the training devices themselves (as many devices, so
  # the same per-device programs: near-equal scores keep their order).
  monkeypatch.setattr(ance.sharding, "refresh_mesh", lambda _: mesh)
  shared_refresher, _, shared = _mined_at_start(_smoke(**base), tmp_path / "shared", mesh)
  assert shared_refresher.refresh_mesh is mesh
  assert aside.query_ids == shared.query_ids
  np.testing.assert_array_equal(aside.counts, shared.counts)
  np.testing.assert_array_equal(aside.candidates, shared.candidates)


def test_async_run_with_refresh_devices_trains_on_the_others(tmp_path):
  config = _smoke(**{"mesh.refresh_devices": 4, "train.num_steps": 4})
  summary = train.run(config, tmp_path, "train")
  refresh = summary["info"]["negative_refresh"]
  assert summary["step"] == 4 and refresh["refresh_devices"] == [4, 5, 6, 7]
  assert refresh["refreshes"] or refresh["unused_refreshes"]


def test_refresh_devices_need_a_refresh_and_training_devices(tmp_path, monkeypatch):
  from configs import dpr as dpr_config  # pylint: disable=g-import-not-at-top
  dpr = with_overrides(dpr_config.get_config("smoke"), {"mesh.refresh_devices": 4})
  assert_rejected_before_compiling(dpr, tmp_path / "dpr", "mesh.refresh_devices", monkeypatch)
  assert_rejected_before_compiling(_smoke(**{"mesh.refresh_devices": 8}), tmp_path / "all",
                                   "mesh.refresh_devices", monkeypatch)
