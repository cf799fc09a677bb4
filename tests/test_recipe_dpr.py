"""The DPR recipe's pieces: model resolution from config.model, data, BM25 negatives, steps."""

import sys
import pathlib

import jax
import numpy as np
import pytest

from retrieval_jax import sharding
from retrieval_jax.data import synthetic
from retrieval_jax.recipes import contrastive, dpr, dual_encoder

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import dpr as dpr_config  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_configs_build_and_name_the_paper():
  assert "Karpukhin" in dpr_config.__doc__ and "main.py --config=configs/dpr.py" in (
      dpr_config.__doc__)
  paper = dpr_config.get_config()
  assert (paper.train.batch_size, paper.optim.lr, paper.train.num_epochs) == (128, 1e-5, 40)
  assert paper.negatives.num == 1 and not paper.model.shared_towers
  assert paper.model.name == "bert-base-uncased" and paper.model.pooling == "cls"
  cpu = dpr_config.get_config("cpu")
  assert cpu.model.name == "minilm" and cpu.data.train_split == "train_minus_dev"
  with pytest.raises(ValueError, match="unknown variant"):
    dpr_config.get_config("gpu")


def test_model_spec_follows_the_checkpoint_unless_overridden():
  config = dpr_config.get_config("cpu")
  spec = dual_encoder.model_spec(config.model)
  assert spec.pooling.mode == "mean" and spec.pooling.normalize
  assert spec.encoder.num_layers == 6 and spec.encoder.hidden_dropout == 0.1
  config.model.update(pooling="auto", normalize="auto", dropout=0.0)
  spec = dual_encoder.model_spec(config.model)
  assert spec.pooling.mode == "mean" and spec.pooling.normalize  # the ST files say so
  assert spec.encoder.hidden_dropout == 0.0 and spec.encoder.attention_dropout == 0.0
  params = dual_encoder.initial_tower_params(spec, seed=0)
  assert params["backbone"]["layer_5"]["mlp"]["intermediate"]["kernel"].shape == (384, 1536)


@pytest.mark.parametrize("field, value, key", [
    ("normalize", "maybe", "model.normalize"),
    ("dtype", "float7", "model.dtype"),
    ("name", "/no/such/model/dir", "/no/such/model/dir"),
])
def test_model_spec_errors_name_the_key(field, value, key):
  config = dpr_config.get_config("cpu")
  config.model[field] = value
  with pytest.raises((ValueError, FileNotFoundError, OSError), match=key):
    dual_encoder.model_spec(config.model)


def test_random_model_needs_a_tokenizer():
  config = dpr_config.get_config("smoke")
  config.model.tokenizer = None
  with pytest.raises(ValueError, match="model.tokenizer"):
    dual_encoder.model_spec(config.model)


def test_load_split_errors_name_data_name():
  config = dpr_config.get_config("smoke")
  config.data.name = "/no/such/dir"
  with pytest.raises(ValueError, match=r"data\.name='/no/such/dir'"):
    contrastive.load_split(config.data, "train")


def test_negative_pool_is_cached_and_excludes_positives(tmp_path, monkeypatch):
  config = dpr_config.get_config("smoke")
  data = synthetic.synthetic_beir("train_minus_dev")
  pool = contrastive.negative_pool(config, data, tmp_path)
  for row, query_id in enumerate(pool.query_ids):
    positives = {data.corpus_ids.index(d) for d in data.qrels[query_id]}
    assert not positives & set(pool.candidates[row][pool.candidates[row] >= 0].tolist())
  mined = []
  original = dpr.mining.bm25_negative_pool
  monkeypatch.setattr(dpr.mining, "bm25_negative_pool",
                      lambda *a, **k: mined.append(1) or original(*a, **k))
  again = contrastive.negative_pool(config, data, tmp_path)
  np.testing.assert_array_equal(again.candidates, pool.candidates)
  assert not mined  # read from the workdir's cache
  config.negatives.depth = 4
  contrastive.negative_pool(config, data, tmp_path)
  assert mined == [1]  # different settings: mined again


def test_build_gives_dpr_batches_with_bm25_negatives(tmp_path):
  config = dpr_config.get_config("smoke")
  recipe = dpr.build(config, tmp_path, sharding.make_mesh(8, 1))
  assert recipe.total_steps == 6 and recipe.info["towers"] == ["query", "passage"]
  batch = recipe.batcher.batch(0)
  assert batch["passage_input_ids"].shape[:2] == (8, 2)
  assert batch["query_input_ids"].shape[0] == 8
  abstract = jax.tree_util.tree_structure(recipe.abstract_state)
  assert jax.tree_util.tree_structure(recipe.state_shardings) == abstract


@pytest.mark.parametrize("num_steps, num_epochs, expected", [(None, 3, 21), (5, 3, 5)])
def test_total_steps(num_steps, num_epochs, expected):
  config = dpr_config.get_config("smoke")
  config.train.num_steps = num_steps
  config.train.num_epochs = num_epochs
  assert contrastive.total_steps(config, steps_per_epoch=7) == expected
