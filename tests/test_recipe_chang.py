"""Chang et al. 2020 end to end on the smoke configs: pre-training (`configs/chang.py:smoke`,
synthetic articles) and ReQA fine-tuning from it (`configs/reqa.py:smoke`, a synthetic SQuAD).

Covers: the configs hold the paper's settings; one pre-training run (shared by the tests) and
a fine-tuning run that starts from its parameters and ends with the `reqa` evaluation; a step
on mesh (4, 2) equals one device; resume equals the uninterrupted run; `init` errors; the
fine-tuning pairs come only from the train articles; the `cpu` step budget; bad keys fail
before compiling, in one line at the command line.
"""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from retrieval_jax import sharding, train
from retrieval_jax.data import reqa as reqa_data
from retrieval_jax.data import synthetic_wiki
from retrieval_jax.recipes import chang, reqa, two_tower

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import chang as chang_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import reqa as reqa_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import assert_rejected_before_compiling, run_python, with_overrides  # pylint: disable=wrong-import-position


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _pretrain(**overrides):
  return with_overrides(chang_config.get_config("smoke"), overrides)


def _finetune(**overrides):
  return with_overrides(reqa_config.get_config("smoke"), overrides)


def test_configs_hold_the_paper_settings():
  assert "2002.03932" in chang_config.__doc__
  paper = chang_config.get_config("mix")
  assert (paper.train.batch_size, paper.train.num_steps, paper.train.query_max_length,
          paper.train.passage_max_length) == (8192, 100_000, 64, 288)
  assert (paper.optim.lr, paper.optim.warmup_ratio, paper.model.projection_dim,
          paper.model.pooling) == (1e-4, 0.1, 512, "cls")
  assert paper.model.random.num_layers == 12 and paper.model.random.hidden_size == 768
  assert dict(paper.data.tasks) == {"ict": 1.0, "bfs": 1.0, "wlp": 1.0}
  for task in ("ict", "bfs", "wlp"):
    assert dict(chang_config.get_config(task).data.tasks) == {task: 1.0}
    cpu = chang_config.get_config(f"{task}_cpu")
    assert dict(cpu.data.tasks) == {task: 1.0} and cpu.data.articles == "wikispeedia"
  assert chang_config.get_config("mix_cpu").model.random.to_dict() == (
      reqa_config.get_config("cpu").model.random.to_dict())  # init fits the fine-tuning shape
  fine = reqa_config.get_config()
  assert (fine.train.batch_size, fine.train.num_steps, fine.optim.lr) == (512, 2000, 5e-5)
  fine.data.train_fraction = 0.05  # the evaluator follows the run's split...
  assert fine.evals.reqa.data.train_fraction == 0.05
  cpu = reqa_config.get_config("cpu")  # ...except on cpu: one test set for every fraction
  cpu.data.train_fraction = 0.01
  assert cpu.evals.reqa.data.train_fraction == 0.8 and cpu.evals.reqa.data.candidates == "test"
  assert reqa_config.get_config("bow_cpu").model.type == "bow_mlp"
  for module in (chang_config, reqa_config):
    with pytest.raises(ValueError, match="unknown variant"):
      module.get_config("tpu")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("chang_smoke")
  return workdir, train.train(_pretrain(), workdir)


def test_pretraining_draws_every_task(pretrained):
  _, result = pretrained
  assert result.step == 4 and np.isfinite(result.train_metrics["loss"])
  assert result.info["anchors"] == {"ict": 117, "bfs": 24, "wlp": 23}
  assert set(result.state["params"]) == {"shared"}


def test_finetuning_starts_from_the_pretrained_towers_and_evaluates(pretrained, tmp_path):
  workdir, result = pretrained
  config = _finetune(init=str(workdir))
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  start = reqa.build(config, tmp_path / "built", mesh).init_state()
  jax.tree_util.tree_map(np.testing.assert_array_equal, _host(start["params"]),
                         _host(result.state["params"]))
  tuned = train.train(config, tmp_path / "run")
  metrics = tuned.eval_metrics
  assert {f"reqa/recall@{k}" for k in (1, 5, 10, 50, 100)} | {"reqa/mrr"} <= set(metrics)
  assert 0.0 < metrics["reqa/recall@100"] <= 1.0
  assert tuned.info["init"] == str(workdir)


def test_eval_cli_scores_the_workdir_as_training_did(pretrained, tmp_path):
  """`eval/reqa.py --model=<workdir>` restores the towers (projection included) and gives the
  final evaluation's numbers."""
  workdir, _ = pretrained
  config = _finetune(init=str(workdir), **{"train.num_steps": 2})
  tuned = train.train(config, tmp_path / "run")
  out = tmp_path / "cli"
  run_python(["eval/reqa.py", f"--model={tmp_path / 'run'}", "--squad=synthetic",
              "--train_fraction=0.5", "--max_length=48", "--query_max_length=16",
              f"--out={out}", "--noprogress"])
  metrics = json.loads((out / "metrics.json").read_text())
  # The CLI runs on 1 device, the test on 8: scores differ in their last bits, which can
  # reorder near-ties of this tiny random model.
  for key in ("recall@1", "recall@5", "mrr"):
    assert metrics[key] == pytest.approx(tuned.eval_metrics[f"reqa/{key}"], abs=1e-3)


def test_init_errors_name_the_key(pretrained, tmp_path):
  workdir, _ = pretrained
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="init='/nowhere'"):
    reqa.build(_finetune(init="/nowhere"), tmp_path / "a", mesh)
  with pytest.raises(ValueError, match="init=.*shapes"):
    reqa.build(_finetune(init=str(workdir), **{"model.projection_dim": 8}), tmp_path / "b", mesh)


def test_separate_towers_start_from_a_shared_one(pretrained, tmp_path):
  workdir, result = pretrained
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  built = reqa.build(_finetune(init=str(workdir), **{"model.shared_towers": False}),
                     tmp_path / "run", mesh)
  params = _host(built.init_state()["params"])
  shared = _host(result.state["params"]["shared"])
  for tower in ("query", "passage"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, params[tower], shared)


def test_a_step_on_mesh_4x2_equals_one_device(tmp_path):
  results = []
  for data, model in ((1, 1), (4, 2)):
    devices = np.asarray(jax.devices()[:data * model]).reshape(data, model)
    mesh = Mesh(devices, (sharding.DATA_AXIS, sharding.MODEL_AXIS))
    recipe = chang.build(_pretrain(), tmp_path / f"{data}x{model}", mesh)
    step = jax.jit(recipe.train_step, in_shardings=(recipe.state_shardings, None, None),
                   out_shardings=(recipe.state_shardings, None))
    state = recipe.init_state()
    for index in range(2):
      batch = {k: jax.device_put(v, recipe.batch_sharding)
               for k, v in recipe.batcher.batch(index).items()
               if k not in recipe.batcher.host_keys}
      state, _ = step(state, {}, batch)
    results.append(_host(state["params"]))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), *results)


def test_resume_equals_the_uninterrupted_run(pretrained, tmp_path):
  _, full = pretrained
  first = train.train(_pretrain(**{"train.stop_at_step": 2}), tmp_path / "run")
  assert first.stopped_early and first.step == 2
  resumed = train.train(_pretrain(), tmp_path / "run")
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         _host({k: resumed.state[k] for k in ("params", "opt_state")}),
                         _host({k: full.state[k] for k in ("params", "opt_state")}))


def test_finetuning_pairs_come_only_from_train_articles():
  data = reqa_data.ReqaData.from_squad(synthetic_wiki.synthetic_squad(num_articles=20))
  train_articles, _ = reqa_data.split_by_article(data.num_articles, 0.25, 3)
  dataset = reqa.training_pairs(data, 0.25, 3)
  by_id = {q.id: q for q in data.questions}
  assert {by_id[q].article for q in dataset.query_ids} == set(train_articles)
  for query_id, rows in zip(dataset.query_ids, dataset.positives):
    answers = {reqa_data.candidate_text(data.candidates[c].sentence, data.candidates[c].context)
               for c in by_id[query_id].answers}
    assert {dataset.doc_texts[r] for r in rows} == answers
  with pytest.raises(ValueError, match="data.train_fraction"):
    reqa.training_pairs(data, 1.5, 0)


def test_cpu_budget_caps_the_steps():
  config = reqa_config.get_config("cpu")
  assert reqa.total_steps(config, 13) == 130 and reqa.total_steps(config, 1100) == 300
  config.train.max_steps = None
  assert reqa.total_steps(config, 1100) == 11_000


@pytest.mark.parametrize("overrides, key", [
    ({"data.tasks": {"mlm": 1.0}}, "data.tasks"),
    ({"data.wlp_passage": "nearby"}, "data.wlp_passage"),
    ({"data.articles": "books:x"}, "data.articles"),
])
def test_invalid_config_fails_before_compiling(tmp_path, monkeypatch, overrides, key):
  assert_rejected_before_compiling(_pretrain(**overrides), tmp_path, key, monkeypatch)


def test_main_reports_a_bad_init_in_one_line(tmp_path):
  result = run_python(["main.py", "--config=configs/reqa.py:smoke", f"--workdir={tmp_path}",
                       f"--config.init={tmp_path / 'missing'}"], check=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: init=")
