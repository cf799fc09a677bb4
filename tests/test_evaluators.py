"""The evaluator registry: entries of config.evals, their data, model roles, prefixed keys."""

import json
import sys

import pytest

from retrieval_jax import evaluators
from retrieval_jax.recipes import base
from tests.helpers import REPO, write_tiny_beir

sys.path.insert(0, str(REPO))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def _config(**entries):
  config = common.base_config()
  config.evals = entries or {"dev": common.retrieval_eval("dev")}
  return config


def test_unknown_type_names_the_key():
  entry = common.retrieval_eval()
  entry.type = "nope"
  with pytest.raises(ValueError, match=r"evals\.mine\.type='nope'.*retrieval"):
    evaluators.build_all(_config(mine=entry))


def test_unset_data_fields_come_from_the_run_data():
  config = _config()
  config.data.update(name="some_beir_dir", dev_fraction=0.3)
  (evaluator,) = evaluators.build_all(config)
  assert evaluator.data_config == {"name": "some_beir_dir", "split": "dev",
                                   "dev_fraction": 0.3, "tfds_dir": None}
  own = common.retrieval_eval("test")
  own.data.name = "other"
  (evaluator,) = evaluators.build_all(_config(t=own))
  assert evaluator.data_config["name"] == "other" and evaluator.data_config["split"] == "test"


def test_bad_setting_names_the_entry():
  entry = common.retrieval_eval()
  entry.index = "faiss"
  with pytest.raises(ValueError, match=r"evals\.dev: index='faiss'"):
    evaluators.build_all(_config(dev=entry))


def test_missing_model_role_is_an_error_naming_recipe_and_roles():
  (evaluator,) = evaluators.build_all(_config())
  assert evaluator.requires == ("query", "passage")
  with pytest.raises(ValueError, match=r"needs the model roles \['query', 'passage'\]; "
                                       r"recipe 'r' provides \[\]"):
    evaluators.run_all([evaluator], base.EvalModels(), None, recipe="r")


def test_bm25_runs_without_models_writes_its_folder_and_prefixes_keys(tmp_path):
  root = write_tiny_beir(tmp_path / "tiny", split="test")
  bm25 = common.retrieval_eval("test")
  bm25.update(index="bm25", depth=5, metrics=("ndcg@10", "recall@10"), progress=False)
  bm25.data.name = str(root)
  other = bm25.copy_and_resolve_references()
  other.metrics = ("map",)
  built = evaluators.build_all(_config(lexical=bm25, second=other))
  assert [e.requires for e in built] == [(), ()]
  metrics = evaluators.run_all(built, base.EvalModels(), tmp_path / "out")
  assert set(metrics) == {"lexical/ndcg@10", "lexical/recall@10", "second/map"}
  written = json.loads((tmp_path / "out" / "lexical" / "metrics.json").read_text())
  assert written["ndcg@10"] == metrics["lexical/ndcg@10"]
  assert (tmp_path / "out" / "second" / "run.trec").exists()
