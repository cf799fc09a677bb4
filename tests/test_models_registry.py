"""The model registry: config.model.type -> a spec; heads from the config; errors name keys."""

import sys

import jax
import numpy as np
import pytest

from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import hf, registry
from tests.helpers import REPO

sys.path.insert(0, str(REPO))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def _model(**fields):
  config = common.training_config().model
  config.update(**fields)
  return config


def test_unknown_type_names_the_key_and_the_known_types():
  with pytest.raises(ValueError, match=r"model\.type='bow'.*\['bow_mlp', 'transformer'\]"):
    registry.build(_model(type="bow"))


def test_random_encoder_takes_the_tokenizer_vocabulary(minilm_dir):
  spec = registry.build(_model(name="random", tokenizer="minilm"))
  assert spec.model_dir is None
  assert spec.encoder.vocab_size == len(tok.load_tokenizer(minilm_dir))
  params = spec.initial_params(jax.random.key(0))
  again = spec.initial_params(jax.random.key(0))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)


def test_heads_from_the_config_on_a_pretrained_encoder(minilm_dir):
  spec = registry.build(_model(name="minilm", token_dim=16, mlp_widths=(8, 4)))
  params = spec.initial_params(jax.random.key(0))
  assert params["token_head"]["linear"]["kernel"].shape == (384, 16)
  assert params["mlp_head"]["dense_1"]["kernel"].shape == (8, 4)
  _, checkpoint, _ = hf.load_pretrained(minilm_dir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["backbone"],
                         checkpoint["backbone"])  # the checkpoint's encoder, untouched


def test_mlm_head_needs_a_checkpoint_that_has_one():
  with pytest.raises(hf.WeightMismatchError, match="no masked-LM head"):
    registry.build(_model(name="minilm", mlm_head=True)).initial_params(jax.random.key(0))


def test_bad_normalize_names_the_key():
  with pytest.raises(ValueError, match=r"model\.normalize='maybe'"):
    registry.build(_model(normalize="maybe"))
