"""Contriever on `configs/contriever.py:smoke` (a tiny random encoder, the synthetic corpus).

Covers: the config follows the released script; one MoCo step against NumPy (the EMA moved
before the keys, the loss, the queue written at its pointer); the queue and pointer after
several steps with wrap-around against a NumPy ring; the key encoder outside the gradient
and the optimizer; a step on mesh (4, 2) equals one device, queue included; resume equals
the uninterrupted run; the in-batch variant; invalid keys rejected before compiling; the
smoke run's evaluation and export.
"""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from retrieval_jax import sharding, train
from retrieval_jax.recipes import contriever

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import contriever as contriever_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import assert_rejected_before_compiling, run_python, with_overrides  # pylint: disable=wrong-import-position

STEPS = 6


def _smoke(**overrides):
  return with_overrides(contriever_config.get_config("smoke"), overrides)


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def test_config_follows_the_released_script():
  assert "Izacard" in contriever_config.__doc__ and "10%" in contriever_config.__doc__
  paper = contriever_config.get_config()
  crop = paper.data.crop
  assert (crop.chunk_length, crop.ratio_min, crop.ratio_max, crop.deletion) == (256, 0.05, 0.5,
                                                                               0.1)
  assert (paper.loss.type, paper.loss.queue_size, paper.loss.momentum,
          paper.loss.temperature) == ("moco", 131_072, 0.9995, 0.05)
  assert (paper.optim.lr, paper.optim.b2, paper.optim.eps, paper.optim.weight_decay,
          paper.optim.warmup_steps) == (5e-5, 0.98, 1e-6, 0.01, 20_000)
  assert (paper.train.batch_size, paper.train.num_steps) == (2048, 500_000)
  assert paper.model.pooling == "mean" and paper.model.normalize == "false"
  assert contriever_config.get_config("inbatch").loss.type == "in_batch"
  assert contriever_config.get_config("cpu").data.sources == ("beir:scifact",)
  scratch = contriever_config.get_config("scratch_cpu")
  assert scratch.model.name == "random" and scratch.data.sources == ("beir:scifact", "wikispeedia")
  assert scratch.loss.queue_size % scratch.train.batch_size == 0
  with pytest.raises(ValueError, match="unknown variant"):
    contriever_config.get_config("tpu")


def _stepper(config, workdir, data=1, model=1):
  """(recipe on a data x model mesh of the first devices, its jitted step, batch placer)."""
  devices = np.asarray(jax.devices()[:data * model]).reshape(data, model)
  mesh = Mesh(devices, (sharding.DATA_AXIS, sharding.MODEL_AXIS))
  recipe = contriever.build(config, workdir, mesh)
  step = jax.jit(recipe.train_step, in_shardings=(recipe.state_shardings, None, None),
                 out_shardings=(recipe.state_shardings, None))

  def batch_at(index):
    local = recipe.batcher.batch(index)
    return {k: jax.device_put(v, recipe.batch_sharding) for k, v in local.items()
            if k not in recipe.batcher.host_keys}

  return recipe, step, batch_at


def _embed(recipe, params, batch, side):
  dual = recipe.train_step.keywords["dual"]
  inputs = (np.asarray(batch[f"{side}_input_ids"]), np.asarray(batch[f"{side}_attention_mask"]))
  return np.asarray(dual.embed(params, inputs, None, "query"), np.float64)


def test_moco_steps_against_numpy(tmp_path):
  """Dropout 0: every step's keys, loss, EMA and queue replayed outside the step."""
  config = _smoke(**{"model.dropout": 0.0})
  recipe, step, batch_at = _stepper(config, tmp_path)
  state = recipe.init_state()
  momentum, size = config.loss.momentum, config.loss.queue_size
  queue = _host(state["queue"]).astype(np.float64)
  np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-6)
  pointer, seen, moved = 0, [], []
  for index in range(5):  # 5 batches of 8 into 24 rows: the ring wraps
    batch = batch_at(index)
    before = _host(state)
    ema = jax.tree_util.tree_map(lambda k, p: momentum * k + (1 - momentum) * p,
                                 before["key_params"], before["params"])
    keys = _embed(recipe, ema, batch, "passage")
    queries = _embed(recipe, before["params"], batch, "query")
    logits = np.concatenate([np.sum(queries * keys, 1, keepdims=True), queries @ queue.T], 1)
    logits /= config.loss.temperature
    top = logits.max(1, keepdims=True)
    expected_loss = np.mean(np.log(np.exp(logits - top).sum(1)) + top[:, 0] - logits[:, 0])
    state, metrics = step(state, {}, batch)
    assert float(metrics["loss"]) == pytest.approx(expected_loss, rel=1e-4, abs=1e-5)
    seen.append(expected_loss)
    assert float(metrics["stdk"]) == pytest.approx(keys.std(0, ddof=1).mean(), rel=1e-4)
    # The key encoder is the EMA, untouched by the optimizer; the params moved.
    got = _host(state["key_params"])
    jax.tree_util.tree_map(lambda g, e: np.testing.assert_allclose(g, e, atol=1e-6), got, ema)
    moved.append(max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(a - b))), _host(state["params"]), before["params"]))))
    for row in keys:
      queue[pointer] = row
      pointer = (pointer + 1) % size
    np.testing.assert_allclose(_host(state["queue"]), queue, atol=1e-5)
    assert int(state["queue_ptr"]) == pointer
  assert pointer == (5 * 8) % size
  assert max(seen) > 0.1  # once the queue holds real keys, the loss is not trivially 0
  assert moved[0] == 0.0 and min(moved[1:]) > 1e-4  # lr 0 at step 0 (warm-up), then updates
  # No optimizer state for the key encoder: the moments are those of the params alone.
  tx = recipe.train_step.keywords["tx"]
  expected = jax.eval_shape(tx.init, state["params"])
  assert (jax.tree_util.tree_structure(state["opt_state"])
          == jax.tree_util.tree_structure(expected))


def test_a_step_on_mesh_4x2_equals_one_device(tmp_path):
  results = []
  for data, model in ((1, 1), (4, 2)):
    recipe, step, batch_at = _stepper(_smoke(), tmp_path / f"{data}x{model}", data, model)
    state = recipe.init_state()
    for index in range(2):
      state, _ = step(state, {}, batch_at(index))
    if data == 4:
      assert state["queue"].sharding.spec[0] == "data"  # rows sharded
    results.append(_host({k: state[k] for k in ("params", "key_params", "queue",
                                                 "queue_ptr")}))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), *results)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("contriever_smoke")
  return workdir, train.train(_smoke(), workdir)


def test_smoke_run_evaluates_and_exports(straight):
  workdir, result = straight
  assert result.step == STEPS and 0.0 <= result.eval_metrics["dev/ndcg@10"] <= 1.0
  assert {"stdq", "stdk", "loss", "accuracy"} <= set(result.train_metrics)
  assert set(result.state) == {"params", "opt_state", "step", "rng", "key_params", "queue",
                               "queue_ptr"}
  assert int(result.state["queue_ptr"]) == (STEPS * 8) % 24
  assert (workdir / "export" / "encoder" / "model.safetensors").exists()


def test_eval_mode_and_eval_cli_on_the_workdir(straight, tmp_path):
  """`main.py --mode=eval` and `eval/retrieval.py --model=<workdir>` score the trained encoder."""
  workdir, result = straight
  expected = result.eval_metrics["dev/ndcg@10"]
  # A warm-up longer than one step: restoring builds an optimizer whose length must fit it.
  evaluated = train.run(_smoke(**{"optim.warmup_steps": 5}), workdir, "eval")
  assert evaluated["step"] == STEPS
  assert evaluated["eval"]["dev/ndcg@10"] == pytest.approx(expected, abs=1e-6)
  out = tmp_path / "cli"
  run_python(["eval/retrieval.py", f"--model={workdir}", "--data=synthetic", "--split=dev",
              "--max_length=32", "--metrics=ndcg@10,recall@10", "--depth=10", f"--out={out}",
              "--noprogress"])
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["ndcg@10"] == pytest.approx(expected, abs=1e-5)


def test_resume_equals_the_uninterrupted_run(straight, tmp_path):
  _, full = straight
  first = train.train(_smoke(**{"train.stop_at_step": 3}), tmp_path / "run")
  assert first.stopped_early and first.step == 3
  resumed = train.train(_smoke(), tmp_path / "run")
  assert resumed.step == STEPS
  keys = ("params", "key_params", "queue", "queue_ptr", "opt_state")
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         _host({k: resumed.state[k] for k in keys}),
                         _host({k: full.state[k] for k in keys}))


def test_in_batch_variant_has_no_queue(tmp_path):
  config = _smoke(**{"loss.type": "in_batch", "train.num_steps": 2, "evals": {}})
  result = train.train(config, tmp_path / "run")
  assert set(result.state) == {"params", "opt_state", "step", "rng"}
  assert np.isfinite(result.train_metrics["loss"])


@pytest.mark.parametrize("overrides, key", [
    ({"loss.queue_size": 20}, "loss.queue_size"),
    ({"loss.queue_size": 4}, "loss.queue_size"),
    ({"loss.type": "simclr"}, "loss.type"),
    ({"loss.momentum": 1.0}, "loss.momentum"),
    ({"loss.temperature": 0.0}, "loss.temperature"),
    ({"data.sources": ()}, "data.sources"),
    ({"data.sources": ("books:x",)}, "data.sources"),
    ({"data.crop.ratio_min": 0.9}, "ratio_min"),
    ({"model.shared_towers": False}, "model.shared_towers"),
])
def test_invalid_config_fails_before_compiling(tmp_path, monkeypatch, overrides, key):
  assert_rejected_before_compiling(_smoke(**overrides), tmp_path, key, monkeypatch)


def test_main_reports_an_invalid_queue_in_one_line(tmp_path):
  result = run_python(["main.py", "--config=configs/contriever.py:smoke",
                       f"--workdir={tmp_path}", "--config.loss.queue_size=20"], check=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: loss.queue_size=20 must be a multiple of train.batch_size=8 (the global batch "
      "of keys is enqueued each step)")

