"""RetroMAE on `configs/retromae.py:smoke` (a tiny random encoder, the synthetic corpus).

Covers so far: resume = the uninterrupted run; two steps on mesh (4, 2) = one device; both
losses equal the reference forward (transformers' BertForMaskedLM and
HF's BERT layer pieces run as `BertLayerForDecoder`); the smoke run trains the encoder, its
MLM head and the decoder, evaluates, exports the encoder as a *ForMaskedLM directory and the
decoder; invalid keys are refused before compiling.
"""

import json
import pathlib
import sys

import numpy as np
import pytest
import transformers

from retrieval_jax import train

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import retromae as retromae_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import assert_rejected_before_compiling, with_overrides  # pylint: disable=wrong-import-position


def _smoke(**overrides):
  return with_overrides(retromae_config.get_config("smoke"), overrides)


def test_config_follows_the_released_recipe():
  assert "Xiao" in retromae_config.__doc__
  paper = retromae_config.get_config()
  assert (paper.data.masking.encoder_ratio, paper.data.masking.decoder_ratio) == (0.3, 0.5)
  assert (paper.data.max_length, paper.train.batch_size, paper.train.num_epochs) == (512, 256, 8)
  assert (paper.optim.lr, paper.optim.warmup_ratio, paper.optim.weight_decay) == (1e-4, 0.1, 0.01)
  assert paper.model.mlm_head and paper.model.pooling == "cls"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("retromae_smoke")
  return workdir, train.train(_smoke(), workdir)


def test_smoke_run_trains_evaluates_and_exports(straight):
  tmp_path, result = straight
  assert result.step == 6 and 0.0 <= result.eval_metrics["dev/ndcg@10"] <= 1.0
  metrics = result.train_metrics
  assert metrics["loss"] == pytest.approx(metrics["encoder_loss"] + metrics["decoder_loss"],
                                          rel=1e-5)
  assert set(result.state["params"]) == {"shared", "decoder"}
  assert "mlm_head" in result.state["params"]["shared"]
  encoder = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "export" / "encoder")
  assert type(encoder).__name__ == "BertForMaskedLM"
  decoder = np.load(tmp_path / "export" / "decoder" / "params.npz")
  assert any(name.endswith("query/kernel") for name in decoder.files)


@pytest.mark.parametrize("overrides, key", [
    ({"model.mlm_head": False}, "model.mlm_head"),
    ({"data.max_length": 1024}, "data.max_length"),
    ({"data.masking.encoder_ratio": 1.5}, "data.masking.encoder_ratio"),
    ({"data.sources": ()}, "data.sources"),
    ({"loss.type": "electra"}, "loss.type"),
    ({"model.decoder": "/nowhere"}, "model.decoder"),
])
def test_invalid_config_fails_before_compiling(tmp_path, monkeypatch, overrides, key):
  assert_rejected_before_compiling(_smoke(**overrides), tmp_path, key, monkeypatch)


def _torch_decoder_layer(params, hf_config):
  """HF's BERT layer pieces holding our decoder's weights, run as `BertLayerForDecoder`."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers.models.bert import modeling_bert as mb  # pylint: disable=g-import-not-at-top

  attention, mlp = params["layer"]["attention"], params["layer"]["mlp"]
  d = hf_config.hidden_size
  t = lambda x: torch.tensor(np.asarray(x, np.float32))
  modules = dict(query=torch.nn.Linear(d, d), key=torch.nn.Linear(d, d),
                 value=torch.nn.Linear(d, d), attention_output=mb.BertSelfOutput(hf_config),
                 intermediate=mb.BertIntermediate(hf_config), output=mb.BertOutput(hf_config))
  with torch.no_grad():
    for name in ("query", "key", "value"):
      modules[name].weight.copy_(t(np.asarray(attention[name]["kernel"]).reshape(d, d).T))
      modules[name].bias.copy_(t(np.asarray(attention[name]["bias"]).reshape(d)))
    out = modules["attention_output"]
    out.dense.weight.copy_(t(np.asarray(attention["output"]["kernel"]).reshape(d, d).T))
    out.dense.bias.copy_(t(attention["output"]["bias"]))
    out.LayerNorm.weight.copy_(t(attention["output_LayerNorm"]["scale"]))
    out.LayerNorm.bias.copy_(t(attention["output_LayerNorm"]["bias"]))
    modules["intermediate"].dense.weight.copy_(t(np.asarray(mlp["intermediate"]["kernel"]).T))
    modules["intermediate"].dense.bias.copy_(t(mlp["intermediate"]["bias"]))
    modules["output"].dense.weight.copy_(t(np.asarray(mlp["output"]["kernel"]).T))
    modules["output"].dense.bias.copy_(t(mlp["output"]["bias"]))
    modules["output"].LayerNorm.weight.copy_(t(mlp["output_LayerNorm"]["scale"]))
    modules["output"].LayerNorm.bias.copy_(t(mlp["output_LayerNorm"]["bias"]))
  heads = hf_config.num_attention_heads

  def layer(query, content, extended_mask):
    b, l, _ = query.shape
    split = lambda x: x.view(b, -1, heads, d // heads).permute(0, 2, 1, 3)
    q, k, v = (split(modules[n](x)) for n, x in
               (("query", query), ("key", content), ("value", content)))
    scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5 + extended_mask
    context = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, l, d)
    attended = modules["attention_output"](context, query)
    return modules["output"](modules["intermediate"](attended), attended)

  for module in modules.values():
    module.eval()
  return layer


def test_losses_equal_the_reference_forward(tmp_path):
  """`losses_and_metrics` = RetroMAEForPretraining.forward (dropout off) on a smoke batch:
  transformers' BertForMaskedLM for the encoder and its loss, HF's BERT layer pieces for
  `BertLayerForDecoder`, the reference's stream construction and extended mask."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from retrieval_jax import sharding  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models import hf  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import retromae  # pylint: disable=g-import-not-at-top

  config = _smoke()
  recipe = retromae.build(config, tmp_path, sharding.mesh_from_config(config))
  state = recipe.init_state()
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(state["params"]))
  batch = recipe.batcher.batch(0)
  model = recipe.train_step.keywords["model"]
  ours, metrics = retromae.losses_and_metrics(
      params, {k: v for k, v in batch.items() if k != "example_index"}, None,
      model=model, decoder=recipe.train_step.keywords["decoder"],
      encoder_predictions=recipe.train_step.keywords["encoder_predictions"])

  hf.save_pretrained(tmp_path / "hf", model.encoder, params["shared"])
  lm = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
  layer = _torch_decoder_layer(params["decoder"], lm.config)
  tensor = lambda name: torch.tensor(np.asarray(batch[name], np.int64))
  with torch.no_grad():
    lm_out = lm(tensor("encoder_input_ids"), tensor("attention_mask"),
                labels=tensor("encoder_labels"), output_hidden_states=True, return_dict=True)
    cls = lm_out.hidden_states[-1][:, :1]
    embedded = lm.bert.embeddings(input_ids=tensor("decoder_input_ids"))
    hiddens = torch.cat([cls, embedded[:, 1:]], dim=1)
    length = batch["decoder_input_ids"].shape[1]
    positions = lm.bert.embeddings.position_embeddings(torch.arange(length)[None])
    visibility = torch.tensor(batch["decoder_visibility"].astype(np.float32))
    extended = (1.0 - visibility[:, None]) * torch.finfo(torch.float32).min
    states = layer(positions + cls, hiddens, extended)
    logits = lm.cls(states)
    decoder_loss = torch.nn.CrossEntropyLoss()(logits.view(-1, lm.config.vocab_size),
                                               tensor("decoder_labels").view(-1))
  np.testing.assert_allclose(float(metrics["encoder_loss"]), float(lm_out.loss), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["decoder_loss"]), float(decoder_loss), rtol=1e-5)
  np.testing.assert_allclose(float(ours), float(lm_out.loss + decoder_loss), rtol=1e-5)


def _host(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def test_resume_equals_the_uninterrupted_run(straight, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  _, full = straight
  first = train.train(_smoke(**{"train.stop_at_step": 3}), tmp_path / "run")
  assert first.stopped_early and first.step == 3
  resumed = train.train(_smoke(), tmp_path / "run")
  assert resumed.step == 6
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         _host({k: resumed.state[k] for k in ("params", "opt_state")}),
                         _host({k: full.state[k] for k in ("params", "opt_state")}))


def test_a_step_on_mesh_4x2_equals_one_device(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top

  from retrieval_jax import sharding  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import retromae  # pylint: disable=g-import-not-at-top
  results = []
  for data, model in ((1, 1), (4, 2)):
    devices = np.asarray(jax.devices()[:data * model]).reshape(data, model)
    mesh = Mesh(devices, (sharding.DATA_AXIS, sharding.MODEL_AXIS))
    recipe = retromae.build(_smoke(), tmp_path / f"{data}x{model}", mesh)
    step = jax.jit(recipe.train_step, in_shardings=(recipe.state_shardings, None, None),
                   out_shardings=(recipe.state_shardings, None))
    state = recipe.init_state()
    for index in range(2):
      batch = {k: jax.device_put(v, recipe.batch_sharding)
               for k, v in recipe.batcher.batch(index).items() if k != "example_index"}
      state, metrics = step(state, {}, batch)
    results.append(_host({"params": state["params"], "loss": metrics["loss"]}))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), *results)


def test_another_recipe_starts_from_the_workdir(straight, tmp_path):
  """`--config.model.name=<retromae workdir>`: DPR's encoder is the exported one, MLM head
  ignored; a workdir with two towers must name one."""
  from configs import dpr as dpr_config  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models import hf, registry  # pylint: disable=g-import-not-at-top
  workdir, result = straight
  config = dpr_config.get_config("smoke")
  config.model.update(name=str(workdir), tokenizer=None)
  spec = registry.build(config.model)
  assert spec.model_dir == workdir / "export" / "encoder" and not spec.mlm_head
  params = spec.initial_params(None)
  np.testing.assert_array_equal(
      params["backbone"]["embeddings"]["word_embeddings"]["embedding"],
      np.asarray(result.state["params"]["shared"]["backbone"]["embeddings"]["word_embeddings"]
                 ["embedding"]))
  two = tmp_path / "two_towers"
  for tower in ("query_encoder", "passage_encoder"):
    (two / "export" / tower).mkdir(parents=True)
    (two / "export" / tower / "config.json").write_text("{}")
  (two / "checkpoints").mkdir()
  with pytest.raises(ValueError, match="passage_encoder.*query_encoder.*name one"):
    hf.resolve_model_dir(two)
  unfinished = tmp_path / "unfinished"
  (unfinished / "checkpoints").mkdir(parents=True)
  with pytest.raises(ValueError, match="without an export yet"):
    hf.resolve_model_dir(unfinished)


def test_mlm_only_has_no_decoder(tmp_path):
  config = _smoke(**{"loss.type": "mlm", "train.num_steps": 2, "evals": {}})
  result = train.train(config, tmp_path)
  assert set(result.state["params"]) == {"shared"}
  assert result.train_metrics["loss"] == pytest.approx(result.train_metrics["encoder_loss"])
  assert not (tmp_path / "export" / "decoder").exists()


def test_encoder_logits_cover_every_label(tmp_path):
  """The step computes encoder logits at `encoder_predictions` positions per row: never fewer
  than a row's labels (over 40 batches), and the gathered labels are exactly the row's."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from retrieval_jax import sharding  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import retromae  # pylint: disable=g-import-not-at-top
  config = _smoke()
  recipe = retromae.build(config, tmp_path, sharding.mesh_from_config(config))
  count = retromae.encoder_predictions(config)
  assert count == recipe.train_step.keywords["encoder_predictions"] == round(32 * 0.3)
  most = 0
  for step in range(40):
    labels = recipe.batcher.batch(step)["encoder_labels"]
    most = max(most, int((labels != -100).sum(1).max()))
    _, gathered = retromae.labelled_positions(jnp.asarray(labels), count)
    for row, kept in zip(labels, np.asarray(gathered)):
      np.testing.assert_array_equal(np.sort(kept[kept != -100]), np.sort(row[row != -100]))
  assert most == count  # the greedy budget is reached: the bound is tight


def test_pretraining_continues_from_a_retromae_workdir(straight, tmp_path):
  """`model.name=<retromae workdir>` starts from its encoder, MLM head and decoder;
  `model.decoder=random` keeps the encoder but starts a new decoder; a wrong path is named."""
  import jax  # pylint: disable=g-import-not-at-top

  from retrieval_jax import sharding  # pylint: disable=g-import-not-at-top
  from retrieval_jax.recipes import retromae  # pylint: disable=g-import-not-at-top
  workdir, result = straight
  trained = _host(result.state["params"])

  def initial(**overrides):
    config = _smoke(**{"model.name": str(workdir), "model.tokenizer": None, **overrides})
    recipe = retromae.build(config, tmp_path / "next", sharding.mesh_from_config(config))
    return recipe, _host(recipe.init_state()["params"])

  recipe, params = initial()
  assert recipe.info["decoder"] == str(workdir / "export" / "decoder")
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["decoder"], trained["decoder"])
  np.testing.assert_allclose(params["shared"]["mlm_head"]["bias"],
                             trained["shared"]["mlm_head"]["bias"], rtol=1e-6)
  _, fresh = initial(**{"model.decoder": "random"})
  np.testing.assert_allclose(fresh["shared"]["mlm_head"]["bias"],
                             trained["shared"]["mlm_head"]["bias"], rtol=1e-6)
  assert not np.allclose(fresh["decoder"]["layer"]["attention"]["query"]["kernel"],
                         trained["decoder"]["layer"]["attention"]["query"]["kernel"])
  with pytest.raises(ValueError, match="model.decoder='/nowhere'"):
    initial(**{"model.decoder": "/nowhere"})


def test_decoder_files_refuse_another_shape(straight, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top

  from retrieval_jax.models import retromae_decoder  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models.config import EncoderConfig  # pylint: disable=g-import-not-at-top
  workdir, result = straight
  exported = workdir / "export" / "decoder"
  params = _host(result.state["params"]["decoder"])
  encoder_config = EncoderConfig.from_hf(
      json.loads((workdir / "export" / "encoder" / "config.json").read_text()))
  loaded = retromae_decoder.load_params(exported, encoder_config, params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
  wider = encoder_config.replace(intermediate_size=encoder_config.intermediate_size * 2)
  with pytest.raises(ValueError, match="intermediate_size"):
    retromae_decoder.load_params(exported, wider, params)
  expects_more = dict(params, extra=np.zeros(3, np.float32))
  with pytest.raises(ValueError, match="missing \\['extra'\\]"):
    retromae_decoder.load_params(exported, encoder_config, expects_more)
  with pytest.raises(ValueError, match="not a RetroMAE decoder export"):
    retromae_decoder.load_params(tmp_path, encoder_config, params)


def test_cpu_variants_name_their_data_and_model():
  cpu = retromae_config.get_config("cpu")
  assert (cpu.model.name, cpu.data.sources, cpu.data.name) == ("minilm", ("beir:scifact",),
                                                               "scifact")
  scratch = retromae_config.get_config("scratch_cpu")
  assert scratch.model.name == "random" and scratch.model.tokenizer == "minilm"
  assert scratch.data.sources == ("beir:scifact", "wikispeedia")
  assert scratch.model.random.num_layers == 4 and scratch.model.random.hidden_size == 256
  with pytest.raises(ValueError, match="unknown variant"):
    retromae_config.get_config("gpu")
