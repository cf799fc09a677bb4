"""Tests for retrieval_jax.models.hf against PyTorch `transformers` and `sentence_transformers`.

References: all-MiniLM-L6-v2 in `transformers.BertModel`, small random BERT / RoBERTa models
built and saved by `transformers` itself, and directories written by sentence-transformers.
Measured differences are printed with a `[measured]` prefix (run with -s to see them).
"""

import json
import logging
import pathlib
import re
import shutil

import flax.linen as nn
import huggingface_hub
import jax
import numpy as np
import pytest
import safetensors.numpy
import sentence_transformers
import torch
import transformers

from retrieval_jax.models import hf

try:  # sentence-transformers >= 5 (the old `sentence_transformers.models` path is deprecated).
  from sentence_transformers.sentence_transformer import modules as st_modules
except ImportError:  # pragma: no cover - older sentence-transformers.
  from sentence_transformers import models as st_modules
from retrieval_jax.models.encoder import TextEncoder, init_params
from retrieval_jax.models.pooling import PoolingConfig

_ATOL = 1e-4

_PAIRS = [
    ("what is dense retrieval?", "Dense retrieval embeds queries and passages as vectors."),
    ("hi", "a"),
    ("JAX on CPU", "XLA compiles the whole forward pass, layer after layer, " * 4),
    ("", "an empty first segment"),
    ("Ünïcödé, punctuation; and numbers 1234!", "short"),
]
_TEXTS = [a + " " + b for a, b in _PAIRS]


# --- helpers --------------------------------------------------------------------------------------


def _forward(config, backbone, input_ids, attention_mask, token_type_ids=None):
  """Our (last hidden states, pooler output) as NumPy, from the `backbone` params."""
  out = TextEncoder(config).apply(
      {"params": {"backbone": backbone}}, np.asarray(input_ids), np.asarray(attention_mask),
      None if token_type_ids is None else np.asarray(token_type_ids),
      method=lambda module, *args: module.backbone(*args))
  hidden, pooled = out.last_hidden_state, out.pooler_output
  return np.asarray(hidden), None if pooled is None else np.asarray(pooled)


def _torch_forward(model, input_ids, attention_mask, token_type_ids=None):
  kwargs = {"input_ids": torch.as_tensor(np.asarray(input_ids), dtype=torch.long),
            "attention_mask": torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)}
  if token_type_ids is not None:
    kwargs["token_type_ids"] = torch.as_tensor(np.asarray(token_type_ids), dtype=torch.long)
  with torch.no_grad():
    out = model(**kwargs)
  pooled = getattr(out, "pooler_output", None)
  return out.last_hidden_state.numpy(), None if pooled is None else pooled.numpy()


def _max_diff_on_real_tokens(ours, theirs, attention_mask):
  real = np.asarray(attention_mask).astype(bool)
  assert ours.shape == theirs.shape
  return float(np.abs(ours[real] - theirs[real]).max())


def _randomize(model: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
  """Perturbs every parameter so that no two tensors are alike (LayerNorms are 1/0 at init)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=generator) * scale)
  return model.eval()


def _tiny_bert_config(**overrides):
  fields = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=40, type_vocab_size=2)
  fields.update(overrides)
  return transformers.BertConfig(**fields)


def _random_batch(vocab, pad_id, lengths, width, seed, avoid=()):
  """Right-padded random ids (never `pad_id` or `avoid` inside a sequence) and the mask."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), width), pad_id, np.int64)
  mask = np.zeros((len(lengths), width), np.int64)
  allowed = np.array([i for i in range(vocab) if i != pad_id and i not in avoid])
  for r, n in enumerate(lengths):
    ids[r, :n] = rng.choice(allowed, n)
    mask[r, :n] = 1
  return ids, mask


class _Records(logging.Handler):
  """Collects WARNING+ records of the transformers / sentence-transformers loggers."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.records = []
    self.loggers = [logging.getLogger(n) for n in ("transformers", "sentence_transformers")]

  def emit(self, record):
    self.records.append(record.getMessage())

  def __enter__(self):
    for logger in self.loggers:
      logger.addHandler(self)
    return self

  def __exit__(self, *exc):
    for logger in self.loggers:
      logger.removeHandler(self)

  def weight_warnings(self):
    pattern = re.compile(r"MISSING|UNEXPECTED|MISMATCH|newly initialized|not used|not initialized",
                         re.IGNORECASE)
    return [r for r in self.records if pattern.search(r)]


def _assert_clean_loading_info(info):
  assert not info["missing_keys"], info
  assert not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  assert not info["error_msgs"], info


def _copy_tensors(src: pathlib.Path, dst: pathlib.Path, edit) -> pathlib.Path:
  """Copies a HF directory, rewriting model.safetensors through `edit(dict) -> dict`."""
  shutil.copytree(src, dst)
  tensors = safetensors.numpy.load_file(str(dst / "model.safetensors"))
  safetensors.numpy.save_file(edit(dict(tensors)), str(dst / "model.safetensors"),
                              metadata={"format": "pt"})
  return dst


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return hf.load_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir):
  return transformers.AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def minilm_torch(minilm_dir):
  return transformers.BertModel.from_pretrained(str(minilm_dir)).eval()


@pytest.fixture(scope="module")
def pair_batch(minilm_tokenizer):
  """Padded sentence pairs: varied lengths, real padding, token types 0 and 1."""
  batch = minilm_tokenizer([a for a, _ in _PAIRS], [b for _, b in _PAIRS], padding=True,
                           return_tensors="np")
  assert batch["attention_mask"].min() == 0 and batch["token_type_ids"].max() == 1
  return batch


@pytest.fixture(scope="module")
def single_batch(minilm_tokenizer):
  batch = minilm_tokenizer(_TEXTS, padding=True, return_tensors="np")
  assert batch["attention_mask"].min() == 0
  return batch


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
  """A small random `transformers.BertModel`, saved as safetensors."""
  torch.manual_seed(0)
  model = _randomize(transformers.BertModel(_tiny_bert_config()), seed=1)
  out = tmp_path_factory.mktemp("tiny_bert")
  model.save_pretrained(out, safe_serialization=True)
  return out


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_dir):
  return transformers.BertModel.from_pretrained(tiny_bert_dir).eval()


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
  """A small random `transformers.RobertaModel` (pad id 1, position offset), safetensors."""
  torch.manual_seed(0)
  config = transformers.RobertaConfig(
      vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=128, pad_token_id=1, bos_token_id=0, eos_token_id=2,
      max_position_embeddings=40, type_vocab_size=1)
  model = _randomize(transformers.RobertaModel(config), seed=2)
  out = tmp_path_factory.mktemp("tiny_roberta")
  model.save_pretrained(out, safe_serialization=True)
  return out


# --- 1. all-MiniLM-L6-v2 vs transformers.BertModel ------------------------------------------------


@pytest.mark.parametrize("token_types", ["given", "omitted"])
def test_minilm_matches_bert_model(minilm, minilm_torch, pair_batch, single_batch, token_types):
  config, params, _ = minilm
  if token_types == "given":
    batch = pair_batch
    types = batch["token_type_ids"]
  else:
    batch = single_batch
    types = None
  ids, mask = batch["input_ids"], batch["attention_mask"]
  hidden, pooled = _forward(config, params["backbone"], ids, mask, types)
  ref_hidden, ref_pooled = _torch_forward(minilm_torch, ids, mask, types)
  hidden_diff = _max_diff_on_real_tokens(hidden, ref_hidden, mask)
  pooled_diff = float(np.abs(pooled - ref_pooled).max())
  print(f"[measured] MiniLM vs BertModel (token types {token_types}): last_hidden_state max abs "
        f"diff {hidden_diff:.3g}, pooler_output max abs diff {pooled_diff:.3g}")
  assert hidden_diff <= _ATOL
  assert pooled_diff <= _ATOL
  # Through the public TextEncoder.token_states as well.
  states = TextEncoder(config).apply({"params": params}, ids, mask, types, method="token_states")
  assert _max_diff_on_real_tokens(np.asarray(states), ref_hidden, mask) <= _ATOL


def test_minilm_declared_pooling_and_config(minilm):
  config, params, pooling = minilm
  assert pooling == PoolingConfig(mode="mean", normalize=True)
  assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
  assert config.with_pooler and "head" not in params


# --- 2. export ------------------------------------------------------------------------------------


def _our_embeddings(config, params, pooling, tokenizer, texts, max_length=256):
  batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="np")
  return np.asarray(TextEncoder(config, pooling).apply(
      {"params": params}, batch["input_ids"], batch["attention_mask"]))


def _compare_sentence_transformers(directory, expected, texts, label):
  with _Records() as records:
    model = sentence_transformers.SentenceTransformer(str(directory), device="cpu")
  assert not records.weight_warnings(), records.records
  got = model.encode(texts, convert_to_numpy=True)
  diff = float(np.abs(got - expected).max())
  cosine = np.sum(got * expected, -1) / (np.linalg.norm(got, axis=-1) *
                                         np.linalg.norm(expected, axis=-1))
  print(f"[measured] {label}: SentenceTransformer(export) vs ours max abs diff {diff:.3g}, "
        f"min cosine {cosine.min():.7f} (1 - cos = {1 - cosine.min():.2g})")
  assert got.shape == expected.shape
  assert diff <= _ATOL and cosine.min() >= 0.9999
  return model


def test_export_loads_in_transformers_and_sentence_transformers(
    minilm, minilm_dir, minilm_tokenizer, single_batch, tmp_path):
  config, params, pooling = minilm
  out = hf.save_pretrained(tmp_path / "export", config, params, pooling=pooling,
                           tokenizer_dir=minilm_dir, max_seq_length=256)
  with _Records() as records:
    model, info = transformers.AutoModel.from_pretrained(str(out), output_loading_info=True)
  _assert_clean_loading_info(info)
  assert not records.weight_warnings(), records.records
  assert type(model).__name__ == "BertModel"
  ids, mask = single_batch["input_ids"], single_batch["attention_mask"]
  ours_hidden, ours_pooled = _forward(config, params["backbone"], ids, mask)
  hidden, pooled = _torch_forward(model.eval(), ids, mask)
  hidden_diff = _max_diff_on_real_tokens(ours_hidden, hidden, mask)
  pooled_diff = float(np.abs(ours_pooled - pooled).max())
  print(f"[measured] MiniLM export in AutoModel: last_hidden_state max abs diff {hidden_diff:.3g}, "
        f"pooler {pooled_diff:.3g}")
  assert hidden_diff <= _ATOL and pooled_diff <= _ATOL

  expected = _our_embeddings(config, params, pooling, minilm_tokenizer, _TEXTS)
  st = _compare_sentence_transformers(out, expected, _TEXTS, "MiniLM export, mean+normalize")
  assert st.max_seq_length == 256
  assert any(isinstance(m, st_modules.Normalize) for m in st)


def test_export_reloads_with_identical_params(minilm, minilm_dir, tmp_path):
  config, params, pooling = minilm
  out = hf.save_pretrained(tmp_path / "export", config, params, pooling=pooling,
                           tokenizer_dir=minilm_dir)
  config2, params2, pooling2 = hf.load_pretrained(out)
  assert config2 == config and pooling2 == pooling
  assert jax.tree.structure(params2) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)
  assert (out / "tokenizer.json").exists() and (out / "vocab.txt").exists()


@pytest.mark.parametrize("pooling", [
    PoolingConfig("mean", projection_dim=32, normalize=True),
    PoolingConfig("cls", projection_dim=48, projection_bias=False, normalize=False),
], ids=["mean-bias-normalize", "cls-nobias"])
def test_export_with_projection_head(minilm, minilm_dir, minilm_tokenizer, pooling, tmp_path):
  config, params, _ = minilm
  model = TextEncoder(config, pooling)
  head = nn.unbox(jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0))["head"])
  rng = np.random.default_rng(0)
  head = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32), head)
  params = {"backbone": params["backbone"], "head": head}
  out = hf.save_pretrained(tmp_path / "export", config, params, pooling=pooling,
                           tokenizer_dir=minilm_dir, max_seq_length=256)
  expected = _our_embeddings(config, params, pooling, minilm_tokenizer, _TEXTS)
  assert expected.shape == (len(_TEXTS), pooling.projection_dim)
  st = _compare_sentence_transformers(out, expected, _TEXTS, f"projection export {pooling}")
  dense = [m for m in st if isinstance(m, st_modules.Dense)]
  assert len(dense) == 1
  assert (dense[0].linear.bias is not None) == pooling.projection_bias
  # Our own loader reads the projection back.
  _, params2, pooling2 = hf.load_pretrained(out)
  assert pooling2 == pooling
  for a, b in zip(jax.tree.leaves(params["head"]), jax.tree.leaves(params2["head"])):
    np.testing.assert_array_equal(a, b)


# --- 3. RoBERTa and checkpoints with task heads ---------------------------------------------------


def test_roberta_matches_and_round_trips(roberta_dir, tmp_path):
  reference = transformers.RobertaModel.from_pretrained(roberta_dir).eval()
  config, params, pooling = hf.load_pretrained(roberta_dir)
  assert config.model_type == "roberta" and config.pad_token_id == 1
  assert config.type_vocab_size == 1 and pooling is None
  # <s>=0 ... </s>=2, then right padding with id 1: positions must restart at pad+1 = 2.
  ids, mask = _random_batch(100, 1, [5, 17, 12, 3], 17, seed=3, avoid=(0, 2))
  for r, n in enumerate([5, 17, 12, 3]):
    ids[r, 0], ids[r, n - 1] = 0, 2
  hidden, pooled = _forward(config, params["backbone"], ids, mask)
  ref_hidden, ref_pooled = _torch_forward(reference, ids, mask)
  diff = _max_diff_on_real_tokens(hidden, ref_hidden, mask)
  print(f"[measured] random RoBERTa vs RobertaModel: last_hidden_state max abs diff {diff:.3g}, "
        f"pooler {np.abs(pooled - ref_pooled).max():.3g}")
  assert diff <= _ATOL and np.abs(pooled - ref_pooled).max() <= _ATOL

  out = hf.save_pretrained(tmp_path / "export", config, params)
  with _Records() as records:
    reloaded, info = transformers.RobertaModel.from_pretrained(out, output_loading_info=True)
  _assert_clean_loading_info(info)
  assert not records.weight_warnings(), records.records
  hidden2, pooled2 = _torch_forward(reloaded.eval(), ids, mask)
  diff2 = _max_diff_on_real_tokens(hidden, hidden2, mask)
  print(f"[measured] RoBERTa export in RobertaModel: last_hidden_state max abs diff {diff2:.3g}")
  assert diff2 <= _ATOL and np.abs(pooled - pooled2).max() <= _ATOL


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "gelu_pytorch_tanh"])
def test_tiny_bert_matches_for_each_activation(hidden_act, tmp_path):
  torch.manual_seed(0)
  # Large weights: the tanh approximation of GELU must be visibly different from exact GELU.
  reference = _randomize(transformers.BertModel(_tiny_bert_config(hidden_act=hidden_act)), 4,
                         scale=0.5)
  reference.save_pretrained(tmp_path)
  config, params, _ = hf.load_pretrained(tmp_path)
  assert config.hidden_act == hidden_act
  ids, mask = _random_batch(100, 0, [9, 4, 16], 16, seed=5)
  types = (np.arange(16)[None] >= 6).astype(np.int64) * mask
  hidden, pooled = _forward(config, params["backbone"], ids, mask, types)
  ref_hidden, ref_pooled = _torch_forward(reference, ids, mask, types)
  diff = _max_diff_on_real_tokens(hidden, ref_hidden, mask)
  print(f"[measured] random BERT ({hidden_act}) vs BertModel: max abs diff {diff:.3g}")
  assert diff <= _ATOL and np.abs(pooled - ref_pooled).max() <= _ATOL


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_masked_lm_checkpoint_loads_its_encoder(family, tmp_path):
  torch.manual_seed(0)
  if family == "bert":
    model = transformers.BertForMaskedLM(_tiny_bert_config())
    pad, prefix, head = 0, "bert.", "cls."
  else:
    model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, pad_token_id=1, max_position_embeddings=40, type_vocab_size=1))
    pad, prefix, head = 1, "roberta.", "lm_head."
  model = _randomize(model, seed=6)
  model.save_pretrained(tmp_path)
  names = safetensors.numpy.load_file(str(tmp_path / "model.safetensors")).keys()
  assert any(n.startswith(prefix) for n in names) and any(n.startswith(head) for n in names)
  config, params, _ = hf.load_pretrained(tmp_path)
  assert not config.with_pooler  # *ForMaskedLM has no pooler.
  base = getattr(model, family)
  ids, mask = _random_batch(100, pad, [7, 11], 11, seed=7, avoid=(0, 2))
  hidden, pooled = _forward(config, params["backbone"], ids, mask)
  ref_hidden, _ = _torch_forward(base, ids, mask)
  diff = _max_diff_on_real_tokens(hidden, ref_hidden, mask)
  print(f"[measured] {family} *ForMaskedLM encoder part: max abs diff {diff:.3g}")
  assert pooled is None and diff <= _ATOL
  # Without permission to drop heads, the head tensors are reported as unexpected.
  tensors = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  with pytest.raises(hf.WeightMismatchError, match=re.escape(head)):
    hf.hf_to_params(tensors, config, ignore_pretraining_heads=False)


def test_export_without_pooler_loads_cleanly(tmp_path):
  torch.manual_seed(0)
  _randomize(transformers.BertForMaskedLM(_tiny_bert_config()), 8).save_pretrained(tmp_path / "mlm")
  config, params, _ = hf.load_pretrained(tmp_path / "mlm")
  out = hf.save_pretrained(tmp_path / "export", config, params)
  _, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
  _assert_clean_loading_info(info)
  assert hf.load_pretrained(out)[0] == config  # And our own reload still has no pooler.


# --- 4. errors, shards, hub cache, packaged names -------------------------------------------------


def test_missing_weight_is_an_error_that_names_it(tiny_bert_dir, tmp_path):
  name = "encoder.layer.1.attention.self.key.bias"
  broken = _copy_tensors(tiny_bert_dir, tmp_path / "broken",
                         lambda t: {k: v for k, v in t.items() if k != name})
  with pytest.raises(hf.WeightMismatchError, match=r"missing \(1\): " + re.escape(name)):
    hf.load_pretrained(broken)


@pytest.mark.parametrize("extra", ["encoder.layer.0.attention.self.extra.weight",
                                   "encoder.layer.2.output.dense.weight",  # A layer too many.
                                   "something_else"])
def test_unexpected_tensor_is_an_error_that_names_it(tiny_bert_dir, tmp_path, extra):
  broken = _copy_tensors(tiny_bert_dir, tmp_path / "broken",
                         lambda t: {**t, extra: np.zeros((4, 4), np.float32)})
  with pytest.raises(hf.WeightMismatchError, match=r"unexpected \(1\): " + re.escape(extra)):
    hf.load_pretrained(broken)


def test_pickle_only_directory_is_refused(tiny_bert, tiny_bert_dir, tmp_path):
  shutil.copy(tiny_bert_dir / "config.json", tmp_path / "config.json")
  torch.save(tiny_bert.state_dict(), tmp_path / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match="safetensors") as error:
    hf.load_pretrained(tmp_path)
  assert "pytorch_model.bin" in str(error.value)


def test_directory_without_config_is_refused(tiny_bert_dir, tmp_path):
  shutil.copy(tiny_bert_dir / "model.safetensors", tmp_path / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_pretrained(tmp_path)


def test_sharded_checkpoint_loads_and_matches(tiny_bert, tmp_path):
  tiny_bert.save_pretrained(tmp_path, max_shard_size="100KB")
  shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
  assert (tmp_path / "model.safetensors.index.json").exists() and len(shards) > 1
  assert not (tmp_path / "model.safetensors").exists()
  config, params, _ = hf.load_pretrained(tmp_path)
  ids, mask = _random_batch(100, 0, [8, 3], 8, seed=9)
  hidden, pooled = _forward(config, params["backbone"], ids, mask)
  ref_hidden, ref_pooled = _torch_forward(tiny_bert, ids, mask)
  diff = _max_diff_on_real_tokens(hidden, ref_hidden, mask)
  print(f"[measured] sharded ({len(shards)} shards) random BERT: max abs diff {diff:.3g}")
  assert diff <= _ATOL and np.abs(pooled - ref_pooled).max() <= _ATOL


def _fake_hub_cache(root: pathlib.Path, repo: str, source: pathlib.Path) -> str:
  """A huggingface_hub cache holding `source`'s files as snapshot of refs/main; the commit."""
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo_dir = root / ("models--" + repo.replace("/", "--"))
  shutil.copytree(source, repo_dir / "snapshots" / commit)
  (repo_dir / "refs").mkdir(parents=True)
  (repo_dir / "refs" / "main").write_text(commit)
  return commit


def test_hub_id_resolves_from_offline_cache(tiny_bert_dir, tmp_path, monkeypatch):
  cache = tmp_path / "hub"
  commit = _fake_hub_cache(cache, "org/name", tiny_bert_dir)
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  # huggingface_hub reads both variables once, at import: patch its constants too.
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  resolved = hf.resolve_model_dir("org/name")
  assert resolved.resolve() == (cache / "models--org--name" / "snapshots" / commit).resolve()
  config, params, _ = hf.load_pretrained("org/name")
  config_direct, params_direct, _ = hf.load_pretrained(tiny_bert_dir)
  assert config == config_direct
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_direct)):
    np.testing.assert_array_equal(a, b)
  # A commit hash as revision resolves too; an unknown repo is an error, not a download.
  assert hf.resolve_model_dir("org/name", revision=commit).resolve() == resolved.resolve()
  with pytest.raises(Exception, match="(?i)offline|cache|outgoing traffic"):
    hf.load_pretrained("org/unknown")


def test_packaged_name_resolves(minilm_dir, minilm):
  assert hf.resolve_model_dir("minilm").resolve() == pathlib.Path(minilm_dir).resolve()
  config, _, pooling = hf.load_pretrained("minilm")
  assert config == minilm[0] and pooling == minilm[2]


def test_missing_local_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf.load_pretrained(str(tmp_path / "nope"))


@pytest.mark.parametrize("position_type", ["relative_key", "relative_key_query"])
def test_unsupported_position_embedding_type(tiny_bert_dir, tmp_path, position_type):
  shutil.copytree(tiny_bert_dir, tmp_path / "model")
  config_file = tmp_path / "model" / "config.json"
  config = json.loads(config_file.read_text())
  config["position_embedding_type"] = position_type
  config_file.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="position_embedding_type"):
    hf.load_pretrained(tmp_path / "model")


# --- sentence-transformers directories written by sentence-transformers itself --------------------


def _st_directory(model_dir, tmp_path, *extra_modules, pooling_mode="mean"):
  """A directory saved by the installed sentence-transformers: Transformer, Pooling, extras."""
  transformer = st_modules.Transformer(str(model_dir))
  dim = 64  # tiny_bert_dir's hidden size.
  pooling = st_modules.Pooling(dim, pooling_mode)
  model = sentence_transformers.SentenceTransformer(
      modules=[transformer, pooling, *extra_modules], device="cpu")
  out = tmp_path / "st"
  model.save(str(out))
  return out, model


@pytest.mark.parametrize("pooling_mode", ["mean", "cls"])
def test_loads_directory_saved_by_installed_sentence_transformers(tiny_bert_dir, tmp_path,
                                                                  pooling_mode):
  dense = st_modules.Dense(64, 16, activation_function=torch.nn.Identity())
  out, model = _st_directory(tiny_bert_dir, tmp_path, dense,
                             st_modules.Normalize(), pooling_mode=pooling_mode)
  config, params, pooling = hf.load_pretrained(out)
  assert pooling == PoolingConfig(pooling_mode, projection_dim=16, normalize=True)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  expected = model.encode(_TEXTS)
  np.testing.assert_allclose(_our_embeddings(config, params, pooling, tokenizer, _TEXTS, 40),
                             expected, atol=_ATOL)


def test_concatenated_pooling_modes_are_refused(tiny_bert_dir, tmp_path):
  shutil.copytree(tiny_bert_dir, tmp_path / "model")
  (tmp_path / "model" / "1_Pooling").mkdir()
  (tmp_path / "model" / "1_Pooling" / "config.json").write_text(json.dumps({
      "word_embedding_dimension": 64, "pooling_mode_cls_token": False,
      "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True,
      "pooling_mode_mean_sqrt_len_tokens": False}))
  (tmp_path / "model" / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling",
       "type": "sentence_transformers.models.Pooling"}]))
  with pytest.raises(ValueError):
    hf.load_pretrained(tmp_path / "model")


def test_dense_activation_is_not_silently_dropped(tiny_bert_dir, tmp_path):
  config, params, _ = hf.load_pretrained(tiny_bert_dir)
  pooling = PoolingConfig("cls", projection_dim=16)
  rng = np.random.default_rng(1)
  params = {"backbone": params["backbone"],
            "head": {"projection": {
                "kernel": (rng.standard_normal((64, 16)) * 0.1).astype(np.float32),
                "bias": (rng.standard_normal(16) * 0.1).astype(np.float32)}}}
  out = hf.save_pretrained(tmp_path / "export", config, params, pooling=pooling,
                           tokenizer_dir=None)
  dense_config = out / "2_Dense" / "config.json"
  dense = json.loads(dense_config.read_text())
  dense["activation_function"] = "torch.nn.modules.activation.Tanh"
  dense_config.write_text(json.dumps(dense))
  try:
    config2, params2, pooling2 = hf.load_pretrained(out)
  except ValueError:
    return  # Refusing an activation we do not implement is correct too.
  ids, mask = _random_batch(100, 0, [6, 3], 6, seed=10)
  model = transformers.BertModel.from_pretrained(out).eval()
  cls_state, _ = _torch_forward(model, ids, mask)
  linear = params["head"]["projection"]
  expected = np.tanh(cls_state[:, 0] @ linear["kernel"] + linear["bias"])
  got = np.asarray(TextEncoder(config2, pooling2).apply({"params": params2}, ids, mask))
  np.testing.assert_allclose(got, expected, atol=_ATOL)
