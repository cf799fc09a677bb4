"""SG-OPT on `configs/sgopt.py:smoke` (a tiny random encoder on synthetic sentences).

Covers: the configs follow the released recipe; every layer's hidden states equal
transformers' `output_hidden_states` (the packaged MiniLM in PyTorch) and the views are their
masked means; a step's loss equals the SG-OPT / SG loss recomputed from the model's outputs,
and a (4, 2) mesh equals one device; the frozen copy is bit-identical after training and
outside the state, the embedding layer unchanged (not even a parameter); the best dev
checkpoint is selected among the evaluations (step 0 included), reported, exported, kept
across a resume, and what `--mode=eval` and `eval/sts.py` evaluate; invalid keys rejected
before compiling.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrieval_jax import checkpoint, losses, recipes, sharding, train
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import hf
from retrieval_jax.models.encoder import TextEncoder
from retrieval_jax.models.transformer import TransformerEncoder
from retrieval_jax.recipes import sgopt

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import sgopt as sgopt_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import (  # pylint: disable=wrong-import-position
    assert_rejected_before_compiling, restore_towers, run_python, with_overrides)


def _smoke(**overrides):
  return with_overrides(sgopt_config.get_config("smoke"), overrides)


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def test_configs_follow_the_released_recipe():
  config = sgopt_config.get_config()
  assert config.model.name == "bert-base-uncased" and config.model.pooling == "cls"
  assert tuple(config.data.splits) == ("train", "dev", "test")  # transductive, as released
  assert dict(config.loss) == {"type": "sg_opt", "temperature": 0.01, "regularizer": 0.1,
                               "head_widths": (4096, 4096), "frozen_dropout": True}
  train_config, optim = config.train, config.optim
  assert (train_config.batch_size, train_config.num_epochs, train_config.max_length) == (16, 1, 128)
  assert (train_config.eval_every_steps, train_config.select_best) == (50, "sts_dev/spearman")
  assert (optim.lr, optim.b1, optim.b2, optim.eps) == (5e-5, 0.9, 0.9, 1e-6)
  assert (optim.warmup_ratio, optim.weight_decay, optim.max_grad_norm) == (0.1, 0.0, 1.0)
  assert config.evals.sts_dev.split == "dev"
  cpu = sgopt_config.get_config("cpu")
  assert cpu.model.name == "minilm" and tuple(cpu.data.splits) == ("train",)
  assert sgopt_config.get_config("sg_cpu").loss.type == "sg"
  with pytest.raises(ValueError, match="unknown variant"):
    sgopt_config.get_config("nope")


def test_hidden_states_and_views_equal_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model_dir = hf.resolve_model_dir("minilm")
  encoder, params, _ = hf.load_pretrained(model_dir)
  tokenizer = tok.load_tokenizer(model_dir)
  texts = ["A man is playing a guitar.", "Three dogs run across a snowy field at dusk.", "Hi"]
  batch = tokenizer(texts, padding=True, return_tensors="np")
  ours = TransformerEncoder(encoder).apply(
      {"params": params["backbone"]}, jnp.asarray(batch["input_ids"]),
      jnp.asarray(batch["attention_mask"]), None, True, True)
  reference = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
  with torch.no_grad():
    theirs = reference(**{k: torch.tensor(v) for k, v in batch.items()},
                       output_hidden_states=True).hidden_states
  assert len(ours.hidden_states) == len(theirs) == encoder.num_layers + 1
  mask = batch["attention_mask"].astype(bool)
  for layer, (a, b) in enumerate(zip(ours.hidden_states, theirs)):
    np.testing.assert_allclose(np.asarray(a)[mask], b.numpy()[mask], atol=2e-5, rtol=1e-4,
                               err_msg=f"hidden state {layer}")
  views = np.asarray(sgopt.layer_views(ours.hidden_states, jnp.asarray(batch["attention_mask"])))
  m = batch["attention_mask"][:, :, None].astype(np.float64)
  expected = np.stack([(h.numpy() * m).sum(1) / m.sum(1) for h in theirs], axis=1)
  np.testing.assert_allclose(views, expected, atol=2e-5, rtol=1e-4)


def _step_inputs(config, workdir, mesh):
  recipe = sgopt.build(config, workdir, mesh)
  batch = {k: v for k, v in recipe.batcher.batch(0).items() if k not in recipe.batcher.host_keys}
  frozen = {n: jax.device_put(f.load(), sharding.param_shardings(f.abstract, mesh))
            for n, f in recipe.frozen.items()}
  return recipe, batch, frozen


def _expected_loss(config, recipe, state, frozen, batch) -> float:
  """The loss recomputed from the model's outputs (no dropout, distance 0 at step 0)."""
  spec = sgopt.model_spec(config)
  copy = _host(frozen[sgopt.FROZEN])
  full = sgopt.with_frozen_part(_host(state["params"]), copy)
  module = spec.module
  ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
  out = TransformerEncoder(spec.encoder).apply({"params": copy["backbone"]}, ids, mask, None,
                                               True, True)
  views = sgopt.layer_views(out.hidden_states, mask)
  cls = np.asarray(out.last_hidden_state)[:, 0]
  trained = module.apply({"params": full}, ids, mask, method=TextEncoder.outputs)
  np.testing.assert_allclose(np.asarray(trained.embedding), cls, atol=1e-6)  # [CLS] anchor
  project = lambda x: module.apply({"params": full}, x, method=lambda m, y: m.mlp(y))
  return float(losses.sg_opt_loss(trained.projection, project(views), 0.01)[0])


def test_step_equals_the_loss_and_a_mesh_equals_one_device(tmp_path):
  config = _smoke(**{"model.dropout": 0.0, "loss.frozen_dropout": False,
                     "loss.temperature": 0.01})
  results = {}
  for name, mesh in {"1": sharding.make_mesh(1, 1, jax.devices()[:1]),
                     "4x2": sharding.make_mesh(4, 2)}.items():
    recipe, batch, frozen = _step_inputs(config, tmp_path / name, mesh)
    state = recipe.init_state()
    if name == "1":
      expected = _expected_loss(config, recipe, state, frozen, batch)
    step = jax.jit(recipe.train_step,
                   in_shardings=(recipe.state_shardings, None, recipe.batch_sharding))
    new_state, metrics = step(state, frozen, batch)
    results[name] = _host((metrics, new_state["params"]))
  (m_1, p_1), (m_8, p_8) = results["1"], results["4x2"]
  assert m_1["distance"] == 0.0 and m_1["loss"] == pytest.approx(expected, rel=1e-5)
  assert m_8["loss"] == pytest.approx(m_1["loss"], rel=1e-5)
  assert m_8["grad_norm"] == pytest.approx(m_1["grad_norm"], rel=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(p_1), jax.tree_util.tree_leaves(p_8)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_plain_sg_steps_on_one_sampled_layer(tmp_path):
  config = _smoke(**{"loss.type": "sg"})
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  recipe, batch, frozen = _step_inputs(config, tmp_path, mesh)
  _, metrics = jax.jit(recipe.train_step)(recipe.init_state(), frozen, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["finite"]) == 1.0


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sgopt_smoke")
  return workdir, train.train(_smoke(), workdir)


def test_frozen_copy_and_embeddings_never_change(smoke_run):
  workdir, result = smoke_run
  config = _smoke()
  start = sgopt.model_spec(config).initial_params(
      sgopt.state_lib.rng_stream(config.seed, "init"))
  np.testing.assert_equal(_host(result.frozen[sgopt.FROZEN]), sgopt.frozen_copy(start))
  assert "embeddings" not in result.state["params"]["backbone"]  # no gradient, no moments
  _, exported, _ = hf.load_pretrained(workdir / "export" / "encoder")
  np.testing.assert_equal(exported["backbone"]["embeddings"], start["backbone"]["embeddings"])
  # The last checkpoint's layers moved (the export and `result.state` are the best STS-B dev
  # step's, which may be step 0).
  last, _, _ = restore_towers(config, workdir, step=result.step)
  last = _host(last.params)["backbone"]
  assert not np.array_equal(last["layer_0"]["attention"]["query"]["kernel"],
                            start["backbone"]["layer_0"]["attention"]["query"]["kernel"])
  assert result.train_metrics["distance"] > 0


def test_the_best_evaluation_is_kept_reported_and_evaluated(smoke_run):
  workdir, result = smoke_run
  scores = {step: json.loads((workdir / "eval" / f"step_{step}" / "sts_dev" /
                              "metrics.json").read_text())["spearman"] for step in (0, 3, 6)}
  best_step = max(scores, key=lambda s: (scores[s], -s))  # the first of equal scores
  assert result.info["best"] == {"step": best_step, "sts_dev/spearman": scores[best_step]}
  assert result.eval_metrics["sts_dev/spearman"] == scores[best_step]
  assert checkpoint.has_best(workdir)
  evaluated = recipes.evaluate(_smoke(), workdir, out_root=workdir / "again")
  assert evaluated["step"] == best_step
  assert evaluated["metrics"]["sts_dev/spearman"] == pytest.approx(scores[best_step], abs=1e-6)
  last = recipes.evaluate(_smoke(), workdir, 6, out_root=workdir / "last")
  assert last["metrics"]["sts_dev/spearman"] == pytest.approx(scores[6], abs=1e-6)


def test_a_resumed_run_keeps_its_best_and_ends_as_an_uninterrupted_one(smoke_run, tmp_path):
  _, uninterrupted = smoke_run
  first = train.train(_smoke(**{"train.stop_at_step": 3}), tmp_path)
  assert first.stopped_early and checkpoint.has_best(tmp_path)
  resumed = train.train(_smoke(), tmp_path)
  assert resumed.info["best"] == uninterrupted.info["best"]
  assert resumed.eval_metrics == uninterrupted.eval_metrics


def test_eval_mode_takes_the_best_step_and_main_rejects_a_bad_one(smoke_run):
  workdir, result = smoke_run
  summary = train.run(_smoke(), workdir, "eval", "best")
  assert summary["step"] == result.info["best"]["step"]
  assert summary["eval"]["sts_dev/spearman"] == pytest.approx(
      result.info["best"]["sts_dev/spearman"], abs=1e-6)
  bad = run_python(["main.py", "--config=configs/sgopt.py:smoke", f"--workdir={workdir}",
                    "--mode=eval", "--step=last"], check=False)
  assert bad.returncode != 0 and "--step='last' must be a step number or 'best'" in bad.stderr


@pytest.mark.slow  # a subprocess: `recipes.evaluate` (above) covers the default in-process
def test_eval_sts_takes_the_best_checkpoint_by_default(smoke_run, tmp_path):
  workdir, result = smoke_run
  run_python(["eval/sts.py", f"--model={workdir}", "--data=synthetic", "--noprogress",
              f"--out={tmp_path}"])
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["step"] == result.info["best"]["step"]
  assert metrics["spearman"] == pytest.approx(result.info["best"]["sts_dev/spearman"], abs=1e-6)


@pytest.mark.parametrize("overrides, key", [
    ({"loss.type": "simcse"}, "loss.type"),
    ({"loss.temperature": 0.0}, "loss.temperature"),
    ({"loss.regularizer": -1.0}, "loss.regularizer"),
    ({"train.select_best": "dev/spearman"}, "train.select_best"),
    ({"train.select_mode": "up"}, "train.select_mode"),
])
def test_invalid_config_fails_before_compiling(tmp_path, monkeypatch, overrides, key):
  assert_rejected_before_compiling(_smoke(**overrides), tmp_path, key, monkeypatch)
