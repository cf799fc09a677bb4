"""The BoW-MLP tower (Chang et al. 2020's baseline) as `model.type='bow_mlp'`.

- the forward equals a NumPy reference (lookup, masked mean, MLP, linear output);
- padding, whatever its ids, does not change an embedding;
- every parameter has logical axis names, and the rules shard the MLP over `model`;
- the DPR-style dual-encoder step trains it on a (4, 2) mesh: the in-batch loss falls;
- the workdir's model files rebuild the same spec; `encode_texts` and the export agree;
- a smoke DPR run with it trains, restores its checkpoint for evaluation and exports;
- bad `model.*` values are refused, naming the key.
"""

import functools
import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from retrieval_jax import encode, optim, sharding
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import bow_mlp, registry
from retrieval_jax.recipes import dual_encoder
from tests.helpers import REPO

if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import dpr as dpr_config  # pylint: disable=g-import-not-at-top,wrong-import-position

_SMALL = bow_mlp.BowConfig(vocab_size=64, embed_dim=12, hidden_widths=(16, 8), output_dim=6,
                           dropout=0.0)
_TEXTS = ["what causes the tides", "Tides follow the moon.", "coffee contains caffeine", "x"]


def _params(config=_SMALL, seed=0):
  module = bow_mlp.BowMlp(config)
  return module, jax.tree_util.tree_map(
      np.asarray, nn.meta.unbox(bow_mlp.init_params(module, jax.random.PRNGKey(seed))))


def _reference(params, config, ids, mask):
  """The BoW-MLP in NumPy float64."""
  table = np.asarray(params["token_embeddings"]["embedding"], np.float64)
  weights = mask.astype(np.float64)[..., None]
  x = (table[ids] * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
  act = np.tanh if config.activation == "tanh" else lambda v: np.maximum(v, 0.0)
  for i in range(len(config.hidden_widths)):
    layer = params[f"hidden_{i}"]
    x = act(x @ np.asarray(layer["kernel"], np.float64) + layer["bias"])
  x = x @ np.asarray(params["output"]["kernel"], np.float64) + params["output"]["bias"]
  return x / np.linalg.norm(x, axis=-1, keepdims=True) if config.normalize else x


def _ids_and_mask(rng, rows, length, vocab=_SMALL.vocab_size):
  ids = rng.integers(1, vocab, (rows, length)).astype(np.int32)
  mask = (np.arange(length) < rng.integers(1, length + 1, rows)[:, None]).astype(np.int32)
  return ids * mask, mask


@pytest.mark.parametrize("activation, normalize, widths", [
    ("tanh", False, (16, 8)), ("relu", True, (16, 8)), ("tanh", False, (10, 12, 14))])
def test_forward_matches_numpy_reference(activation, normalize, widths):
  config = bow_mlp.BowConfig(vocab_size=64, embed_dim=12, hidden_widths=widths, output_dim=6,
                             activation=activation, normalize=normalize)
  module, params = _params(config)
  ids, mask = _ids_and_mask(np.random.default_rng(1), 5, 9)
  ours = module.apply({"params": params}, ids, mask)
  assert ours.dtype == jnp.float32 and ours.shape == (5, 6)
  np.testing.assert_allclose(ours, _reference(params, config, ids, mask), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_the_embedding():
  module, params = _params()
  ids, mask = _ids_and_mask(np.random.default_rng(2), 4, 6)
  padded_mask = np.concatenate([mask, np.zeros((4, 10), np.int32)], axis=1)
  padded_ids = np.concatenate([ids, np.full((4, 10), 7, np.int32)], axis=1)
  padded_ids[padded_mask == 0] = 13  # ids under the mask are arbitrary: they must not count
  np.testing.assert_allclose(module.apply({"params": params}, padded_ids, padded_mask),
                             module.apply({"params": params}, ids, mask), atol=1e-6)


def test_dropout_only_when_not_deterministic():
  config = bow_mlp.BowConfig(vocab_size=64, embed_dim=12, hidden_widths=(16,), output_dim=6,
                             dropout=0.5)
  module, params = _params(config)
  ids, mask = _ids_and_mask(np.random.default_rng(3), 4, 6)
  inference = module.apply({"params": params}, ids, mask)
  np.testing.assert_allclose(inference, _reference(params, config, ids, mask), atol=1e-5)
  train = module.apply({"params": params}, ids, mask, deterministic=False,
                       rngs={"dropout": jax.random.PRNGKey(0)})
  assert not np.allclose(train, inference)


def test_parameters_carry_logical_axis_names():
  abstract = bow_mlp.abstract_params(bow_mlp.BowMlp(_SMALL))
  names = jax.tree_util.tree_map(lambda box: box.names, abstract,
                                 is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert names == {
      "token_embeddings": {"embedding": ("vocab", "embed")},
      "hidden_0": {"kernel": ("embed", "mlp"), "bias": ("mlp",)},
      "hidden_1": {"kernel": ("mlp", "embed"), "bias": ("embed",)},
      "output": {"kernel": ("embed", "projection"), "bias": ("projection",)}}
  specs = jax.tree_util.tree_map(lambda s: s.spec,
                                 sharding.param_shardings(abstract, sharding.make_mesh(4, 2)))
  assert specs["hidden_0"]["kernel"] == P(None, "model")  # column-parallel
  assert specs["hidden_1"]["kernel"] == P("model", None)  # row-parallel
  assert specs["token_embeddings"]["embedding"] == P(None, None)
  # What sharding.validate checks against mesh.model: the column-parallel width, no heads.
  assert (_SMALL.intermediate_size, _SMALL.num_heads) == (16, 0)


def _pair_batch(rng, rows=8, group=2, length=8):
  """Each query's positive holds the query's tokens in another order; the negative is random."""
  q_ids = rng.integers(1, _SMALL.vocab_size, (rows, length)).astype(np.int32)
  positive = rng.permuted(q_ids, axis=1)
  negative = rng.integers(1, _SMALL.vocab_size, (rows, length)).astype(np.int32)
  p_ids = np.stack([positive, negative][:group], axis=1)
  return dict(query_input_ids=q_ids, query_attention_mask=np.ones_like(q_ids),
              passage_input_ids=p_ids,
              passage_attention_mask=np.ones_like(p_ids))


@pytest.mark.parametrize("shared", [False, True])
def test_dual_encoder_step_lowers_the_in_batch_loss(shared):
  mesh = sharding.make_mesh(4, 2)  # the MLP split over `model`
  config = bow_mlp.BowConfig(vocab_size=64, embed_dim=16, hidden_widths=(32, 32),
                             output_dim=16, dropout=0.1)
  dual = dual_encoder.DualEncoder(bow_mlp.BowMlp(config), shared)
  tx = optim.make_optimizer(1e-2, total_steps=20, warmup_steps=0, weight_decay=0.0,
                            max_grad_norm=1.0)
  shardings = dual_encoder.state_shardings(dual, tx, mesh)
  _, tower = _params(config)
  state = dual_encoder.init_state(dual, tx, tower, seed=0, shardings=shardings)
  loss_config = ml_collections.ConfigDict(dict(scale=1.0, symmetric=False, grad_cache=False,
                                                chunk_size=4))
  step_fn = functools.partial(dual_encoder.train_step, dual=dual, tx=tx,
                              schedule=optim.make_schedule(1e-2, 20), loss_config=loss_config)
  step = jax.jit(lambda state, batch: step_fn(state, {}, batch),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  batch = _pair_batch(np.random.default_rng(0))
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
    assert metrics["finite"] == 1.0
  print(f"[measured] BoW-MLP in-batch loss over 8 steps: {losses[0]:.3f} -> {losses[-1]:.3f}")
  assert losses[-1] < 0.5 * losses[0]


def _bow_model_config(**fields):
  config = common.training_config().model
  config.update(type="bow_mlp", tokenizer="minilm")
  config.bow.update(embed_dim=16, hidden_widths=(32, 32), output_dim=8)
  config.update(**fields)
  return config


def test_model_files_rebuild_the_same_spec(tmp_path, minilm_dir):
  model_config = _bow_model_config(normalize="true", dtype="bfloat16")
  spec = dual_encoder.model_spec(model_config)
  assert isinstance(spec, registry.BowMlpSpec) and spec.model_dir is None
  assert spec.encoder.vocab_size == len(tok.load_tokenizer(minilm_dir))
  assert spec.pooling.mode == "mean" and spec.pooling.normalize
  registry.save_model_files(spec, tmp_path / "model")
  again = registry.build(model_config, files_dir=tmp_path / "model")
  assert (again.encoder, again.pooling, again.module) == (spec.encoder, spec.pooling,
                                                          spec.module)
  assert again.tokenizer_dir == tmp_path / "model" / registry.TOKENIZER_SUBDIR
  assert len(tok.load_tokenizer(again.tokenizer_dir)) == spec.encoder.vocab_size
  jax.tree_util.tree_map(np.testing.assert_array_equal, spec.initial_params(jax.random.key(0)),
                         again.initial_params(jax.random.key(0)))
  with pytest.raises(ValueError, match=r"model\.type='transformer'.*'bow_mlp'"):
    registry.build(common.training_config().model, files_dir=tmp_path / "model")


def test_encode_texts_and_the_export_agree(tmp_path, minilm_dir):
  spec = dual_encoder.model_spec(_bow_model_config())
  dual = dual_encoder.DualEncoder(spec.module, shared=True)
  params = {"shared": dual_encoder.initial_tower_params(spec, seed=0)}
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
  (query, _) = dual_encoder.tower_encoders(dual, params, tokenizer, spec.model_dir)
  ours = encode.encode_texts(query, _TEXTS, max_length=16, batch_size=8, progress=False)
  batch = tokenizer(_TEXTS, padding=True, truncation=True, max_length=16, return_tensors="np")
  direct = dual.embed(params, (batch["input_ids"], batch["attention_mask"]), None, "query")
  np.testing.assert_allclose(ours, direct, atol=1e-5)
  (written,) = dual_encoder.export(dual, params, tmp_path / "export", spec.tokenizer_dir, 16)
  meta = json.loads((written / bow_mlp.CONFIG_FILE).read_text())
  assert meta["similarity"] == "dot" and meta["config"]["output_dim"] == 8
  loaded = encode.load_encoder(written)
  assert isinstance(loaded.model, bow_mlp.BowMlp) and loaded.config == spec.encoder
  np.testing.assert_allclose(
      encode.encode_texts(loaded, _TEXTS, max_length=16, batch_size=8, progress=False), ours,
      atol=1e-6)
  with pytest.raises(ValueError, match="BoW-MLP"):
    encode.load_encoder(written, pooling="cls")


def test_a_smoke_dpr_run_trains_restores_and_exports(tmp_path, minilm_dir):
  from retrieval_jax import recipes, train  # pylint: disable=g-import-not-at-top

  config = dpr_config.get_config("smoke")
  config.model.update(type="bow_mlp", pooling="auto")
  config.model.bow.update(embed_dim=16, hidden_widths=(32, 32), output_dim=8)
  result = train.run(config, tmp_path, "train_and_eval")
  assert result["step"] == 6 and np.isfinite(result["train"]["loss"])
  models, step = recipes.eval_models(config, tmp_path)
  assert step == 6 and isinstance(models.query.model, bow_mlp.BowMlp)
  restored = encode.encode_texts(models.passage, _TEXTS, max_length=32, progress=False)
  exported = encode.load_encoder(tmp_path / "export" / "passage_encoder")
  np.testing.assert_allclose(
      encode.encode_texts(exported, _TEXTS, max_length=32, progress=False), restored,
      atol=1e-6)
  evaluated = recipes.evaluate(config, tmp_path)["metrics"]
  assert evaluated == pytest.approx(result["eval"])


@pytest.mark.parametrize("fields, key", [
    (dict(tokenizer=None), "model.tokenizer"),
    (dict(pooling="cls"), "model.pooling"),
    (dict(projection_dim=512), "model.projection_dim"),
    (dict(token_dim=16), "model.token_dim"),
    (dict(dropout=1.5), "model.dropout"),
    (dict(normalize="maybe"), "model.normalize"),
    (dict(dtype="float7"), "model.dtype"),
    (dict(bow=dict(activation="gelu")), "model.bow.activation"),
    (dict(bow=dict(hidden_widths=())), "model.bow.hidden_widths"),
    (dict(bow=dict(output_dim=0)), "model.bow.output_dim"),
    (dict(bow=dict(embed_dims=8)), "model.bow has unknown keys"),
])
def test_bad_config_names_the_key(fields, key):
  model_config = _bow_model_config()
  bow = fields.pop("bow", None)
  model_config.update(**fields)
  if bow is not None:
    model_config.bow = bow
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    registry.build(model_config)
