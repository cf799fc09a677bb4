"""`model.projection_dim`: a linear projection of the pooled vector (Chang et al. 2020: 512).

- a random Transformer tower and the packaged MiniLM give 512-d embeddings, the projection
  randomly initialised (seeded) and the MiniLM encoder untouched;
- the spec round-trips through the workdir's model files, and a smoke run's checkpoint
  restores its projection for evaluation;
- the export carries the projection as a sentence-transformers Dense module: our loader,
  `SentenceTransformer` and a run starting from the export give the same embeddings, and a
  different `model.projection_dim` on that export is refused;
- bad values name the key.
"""

import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np
import pytest

from retrieval_jax import encode
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import hf, registry
from retrieval_jax.recipes import dual_encoder
from tests.helpers import REPO

if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import dpr as dpr_config  # pylint: disable=g-import-not-at-top,wrong-import-position

_TEXTS = ["What causes the TIDES?", "Tides follow the moon and the sun.", "caffeine", "a"]


def _model(**fields):
  config = common.training_config().model
  config.update(**{"projection_dim": 512, **fields})
  return config


def _embed(spec, params, texts=_TEXTS, max_length=32):
  encoder = encode.LoadedEncoder(spec.module, params, tok.load_tokenizer(spec.tokenizer_dir),
                                 pathlib.Path("."))
  return encode.encode_texts(encoder, texts, max_length=max_length, batch_size=8,
                             progress=False)


def test_config_default_is_none():
  assert common.model_config().projection_dim is None
  spec = registry.build(common.training_config().model)
  assert spec.pooling.projection_dim is None  # MiniLM as it is, 384-d


def test_random_transformer_tower_gives_512_dims(minilm_dir):
  spec = registry.build(_model(name="random", tokenizer="minilm", pooling="cls"))
  assert spec.pooling.projection_dim == 512
  params = dual_encoder.initial_tower_params(spec, seed=0)
  assert params["head"]["projection"]["kernel"].shape == (32, 512)
  dual = dual_encoder.DualEncoder(spec.module, shared=False)
  towers = {"query": params, "passage": params}
  ids = np.ones((3, 5), np.int32)
  assert dual.embed(towers, (ids, ids), jax.random.key(0), "query").shape == (3, 512)
  assert _embed(spec, params).shape == (len(_TEXTS), 512)


def test_minilm_gets_a_random_projection_and_keeps_its_encoder(minilm_dir):
  spec = registry.build(_model(name="minilm"))
  assert (spec.pooling.mode, spec.pooling.normalize, spec.pooling.projection_dim) == (
      "mean", True, 512)  # the checkpoint's pooling, projected before normalising
  params = spec.initial_params(jax.random.key(0))
  assert params["head"]["projection"]["kernel"].shape == (384, 512)
  _, checkpoint, _ = hf.load_pretrained(minilm_dir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["backbone"],
                         checkpoint["backbone"])
  again = spec.initial_params(jax.random.key(0))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)  # seeded
  embeddings = _embed(spec, params)
  assert embeddings.shape == (len(_TEXTS), 512)
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fields", [dict(name="minilm"),
                                    dict(name="random", tokenizer="minilm", pooling="mean")])
def test_model_files_round_trip(tmp_path, minilm_dir, fields):
  model_config = _model(**fields)
  spec = registry.build(model_config)
  registry.save_model_files(spec, tmp_path / "model")
  again = registry.build(model_config, files_dir=tmp_path / "model")
  assert (again.encoder, again.pooling) == (spec.encoder, spec.pooling)
  assert jax.tree_util.tree_structure(again.abstract_params()) == jax.tree_util.tree_structure(
      spec.abstract_params())


@pytest.mark.slow  # tests/test_recipe_chang.py trains, restores and evaluates a projection too
def test_a_smoke_run_restores_its_projection(tmp_path, minilm_dir):
  from retrieval_jax import recipes, train  # pylint: disable=g-import-not-at-top

  config = dpr_config.get_config("smoke")
  config.model.projection_dim = 16
  config.train.update(num_steps=2, checkpoint_every_steps=2)
  train.run(config, tmp_path, "train")
  models, step = recipes.eval_models(config, tmp_path)
  assert step == 2 and models.query.pooling.projection_dim == 16
  restored = encode.encode_texts(models.passage, _TEXTS, max_length=32, progress=False)
  assert restored.shape == (len(_TEXTS), 16)
  exported = encode.load_encoder(tmp_path / "export" / "passage_encoder")
  np.testing.assert_allclose(
      encode.encode_texts(exported, _TEXTS, max_length=32, progress=False), restored,
      atol=1e-5)


def test_export_carries_the_projection_as_a_dense_module(tmp_path, minilm_dir):
  import sentence_transformers  # pylint: disable=g-import-not-at-top

  spec = registry.build(_model(name="minilm"))
  dual = dual_encoder.DualEncoder(spec.module, shared=True)
  params = {"shared": dual_encoder.initial_tower_params(spec, seed=3)}
  ours = _embed(spec, params["shared"], max_length=64)
  (out,) = dual_encoder.export(dual, params, tmp_path / "export", spec.tokenizer_dir, 64)
  modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
  assert modules == ["Transformer", "Pooling", "Dense", "Normalize"]
  dense = json.loads((out / "2_Dense" / "config.json").read_text())
  assert (dense["in_features"], dense["out_features"]) == (384, 512)
  loaded = encode.load_encoder(out)
  assert loaded.pooling.projection_dim == 512
  np.testing.assert_allclose(
      encode.encode_texts(loaded, _TEXTS, max_length=64, progress=False), ours, atol=1e-5)
  st = sentence_transformers.SentenceTransformer(str(out), device="cpu")
  np.testing.assert_allclose(st.encode(_TEXTS, convert_to_numpy=True), ours, atol=1e-4)
  # A run starting from the export continues with its projection, not a new random one.
  continued = registry.build(_model(name=str(out)))
  start = continued.initial_params(jax.random.key(9))
  np.testing.assert_array_equal(start["head"]["projection"]["kernel"],
                                params["shared"]["head"]["projection"]["kernel"])
  with pytest.raises(ValueError, match=r"model\.projection_dim=256.*projects to 512"):
    registry.build(_model(name=str(out), projection_dim=256))


@pytest.mark.parametrize("value", [0, -3, "512", 1.5, True])
def test_bad_values_name_the_key(value):
  # A plain ConfigDict: the typed field of configs/common.py refuses "512" on its own.
  model_config = ml_collections.ConfigDict(
      {**_model(name="random", tokenizer="minilm").to_dict(), "projection_dim": value})
  with pytest.raises(ValueError, match=r"model\.projection_dim"):
    registry.build(model_config)
