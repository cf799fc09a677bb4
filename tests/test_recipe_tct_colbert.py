"""TCT-ColBERT on `configs/tct_colbert.py:smoke` (a random student and a random teacher).

Covers: the configs; the student's input format equals pyserini's TCT tokenisation on real
SciFact texts and its pooling skips the prefix; the KD loss of a step against NumPy; the KD
loss spans the global batch (mesh (4, 2) = one device); the teacher receives no gradient,
has no optimizer state and is bit-identical after training; teachers from a ColBERT
directory and from a ColBERT training workdir; the hard-negative variant mines with the
student's format; the export; invalid keys rejected before compiling.
"""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from retrieval_jax import sharding, train
from retrieval_jax.data import tct_format
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import colbert_files, hf
from retrieval_jax.models.encoder import TextEncoder
from retrieval_jax.models.pooling import PoolingConfig, PoolingHead
from retrieval_jax.recipes import tct_colbert

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import colbert as colbert_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import tct_colbert as tct_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import (  # pylint: disable=wrong-import-position
    assert_rejected_before_compiling, assert_shapes_follow_the_global_batch, with_overrides)


def _smoke(**overrides):
  return with_overrides(tct_config.get_config("smoke"), overrides)


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def test_configs_follow_the_paper():
  assert "Lin" in tct_config.__doc__
  paper = tct_config.get_config()
  assert (paper.train.batch_size, paper.optim.lr, paper.optim.warmup_steps) == (96, 7e-6, 10_000)
  assert paper.optim.max_grad_norm == 1.0 and paper.loss.temperature == 0.25
  assert (paper.train.query_max_length, paper.train.passage_max_length) == (36, 154)
  assert paper.model.pooling == "mean" and paper.model.pooling_skip_first == 4
  assert paper.teacher.name == "colbert-ir/colbertv2.0" and paper.loss.type == "kd"
  hn = tct_config.get_config("hn")
  assert hn.loss.type == "ce" and hn.negatives.source == "ann" and hn.negatives.mine_at_start
  assert hn.negatives.refresh_every == 0 and hn.negatives.depth == 200
  tct_hn = tct_config.get_config("tct_hn")
  assert tct_hn.loss.type == "kd" and tct_hn.negatives.source == "ann"
  assert tct_config.get_config("cpu").teacher.name == ""
  with pytest.raises(ValueError, match="unknown variant"):
    tct_config.get_config("hnp")


@pytest.fixture(scope="module")
def scifact_texts(scifact_train):
  return list(scifact_train.query_texts[:20]), list(scifact_train.doc_strings()[:10])


def test_student_format_equals_pyserini_tokenisation(scifact_texts):
  tokenizer = tok.load_tokenizer(hf.resolve_model_dir("minilm"))
  fmt = tct_format.tct_format(tokenizer, 36, 154)
  assert fmt.skip == 4
  queries, docs = scifact_texts
  queries = queries + ["word " * 40]  # longer than 32 tokens: no [MASK] left
  for text, ids in zip(queries, tct_format.tokenize_queries(tokenizer, fmt, queries)):
    expected = tokenizer("[CLS] [Q] " + text + "[MASK]" * 36, max_length=36, truncation=True,
                         add_special_tokens=False)["input_ids"]
    assert ids == expected
  for text, ids in zip(docs, tct_format.tokenize_documents(tokenizer, fmt, docs)):
    expected = tokenizer("[CLS] [D] " + text, max_length=154, truncation=True,
                         add_special_tokens=False)["input_ids"]
    assert ids == expected


def test_pooling_skips_the_prefix():
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(2, 9, 4)).astype(np.float32)
  mask = np.ones((2, 9), np.int32)
  mask[1, 6:] = 0
  head = PoolingHead(PoolingConfig(mode="mean", skip_first=4))
  got = np.asarray(head.apply({}, hidden, mask))
  np.testing.assert_allclose(got[0], hidden[0, 4:].mean(0), atol=1e-6)
  np.testing.assert_allclose(got[1], hidden[1, 4:6].mean(0), atol=1e-6)
  with pytest.raises(ValueError, match="skip_first"):
    PoolingConfig(mode="cls", skip_first=4)


def _recipe(config, workdir, mesh):
  recipe = tct_colbert.build(config, workdir, mesh)
  batch = {k: v for k, v in recipe.batcher.batch(0).items() if k not in recipe.batcher.host_keys}
  frozen = {name: jax.device_put(f.load()) for name, f in recipe.frozen.items()}
  return recipe, batch, frozen


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _numpy_kd(recipe, batch, state, frozen) -> float:
  """The KD loss by hand in float64 from the two models' outputs."""
  student = recipe.train_step.keywords["dual"].model
  teacher = recipe.train_step.keywords["teacher"]
  params = _host(state["params"])["shared"]
  q = np.asarray(student.apply({"params": params}, batch["query_input_ids"],
                               batch["query_attention_mask"]), np.float64)
  num, group, length = batch["passage_input_ids"].shape
  p = np.asarray(student.apply({"params": params},
                               batch["passage_input_ids"].reshape(-1, length),
                               batch["passage_attention_mask"].reshape(-1, length)), np.float64)
  t_params = _host(frozen["teacher"])

  def vectors(prefix, rows):
    ids, att, keep = (batch[f"{prefix}_{k}"] for k in ("input_ids", "attention_mask",
                                                        "keep_mask"))
    width = ids.shape[-1]
    ids, att, keep = (np.asarray(a).reshape(rows, width) for a in (ids, att, keep))
    vec = np.asarray(teacher.apply({"params": t_params}, ids, att, keep,
                                   method=TextEncoder.token_vectors), np.float64)
    return vec, keep.astype(bool)

  tq, _ = vectors("teacher_query", num)
  td, keep = vectors("teacher_passage", num * group)
  teacher_scores = np.zeros((num, num * group))
  for a in range(num):
    for b in range(num * group):
      teacher_scores[a, b] = (tq[a] @ td[b][keep[b]].T).max(-1).sum()
  log_p_t = _np_log_softmax(teacher_scores / 0.25)
  log_p_s = _np_log_softmax(q @ p.T)  # scale 1, the student's logits untempered
  return float(np.mean(np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), -1)))


def test_kd_step_equals_numpy_and_spans_the_global_batch_on_a_mesh(tmp_path):
  """The KD loss of a step against NumPy over all 8 x 16 (query, passage) pairs of the
  global batch, and a (4, 2) mesh equal to one device."""
  config = _smoke()
  results = {}
  for name, mesh in {"1": sharding.make_mesh(1, 1, jax.devices()[:1]),
                     "4x2": sharding.make_mesh(4, 2)}.items():
    recipe, batch, _ = _recipe(config, tmp_path / name, mesh)
    frozen = {n: jax.device_put(f.load(), train.sharding.param_shardings(f.abstract, mesh))
              for n, f in recipe.frozen.items()}
    step = jax.jit(lambda s, f, b, r=recipe: r.train_step.func(
        s, f, b, dropout=False, **r.train_step.keywords),
        in_shardings=(recipe.state_shardings, None, recipe.batch_sharding))
    state = recipe.init_state()
    if name == "1":
      expected = _numpy_kd(recipe, batch, state, frozen)
    new_state, metrics = step(state, frozen, batch)
    results[name] = _host((metrics, new_state["params"]))
  assert_shapes_follow_the_global_batch(recipe.batcher)
  (m_b, _), (m_a, _) = results["1"], results["4x2"]
  assert batch["passage_input_ids"].shape[:2] == (8, 2)
  assert m_b["kd"] == pytest.approx(expected, rel=1e-5)
  assert m_b["loss"] == pytest.approx(expected, rel=1e-5)  # ce_weight 0
  assert abs(m_a["kd"] - m_b["kd"]) <= 1e-5 * max(1.0, abs(m_b["kd"]))
  assert abs(m_a["grad_norm"] - m_b["grad_norm"]) <= 1e-4 * m_b["grad_norm"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tct_smoke")
  return workdir, train.train(_smoke(), workdir)


def test_teacher_is_frozen_and_outside_the_state(smoke_run):
  workdir, result = smoke_run
  config = _smoke()
  teacher = tct_colbert.Teacher(config.teacher, tok.load_tokenizer(
      hf.resolve_model_dir("minilm")))
  np.testing.assert_equal(_host(result.frozen["teacher"]), teacher.frozen_input().load())
  state_shapes = {leaf.shape for leaf in jax.tree_util.tree_leaves(result.state)}
  head = result.frozen["teacher"]["token_head"]["linear"]["kernel"]
  assert head.shape == (32, 16) and head.shape not in state_shapes
  assert set(result.state["params"]) == {"shared"}
  exported = workdir / "export" / "encoder"
  fmt = json.loads((exported / tct_format.FORMAT_FILE).read_text())
  assert fmt["query_length"] == 20 and fmt["pooling"].endswith(">= 4")
  assert not (exported / "modules.json").exists()  # no ST pooling that would not skip


@pytest.mark.parametrize("contents, message", [
    ("{", "not JSON"), ('{"query_length": 36}', "no \\['document_max_length'"),
    ('{"query_length": 36, "document_max_length": 154, "skip_first": 3, "normalize": true}',
     "skip_first=3, but the tokenizer's prefix is 4"),
])
def test_a_bad_format_file_is_named(tmp_path, contents, message):
  (tmp_path / tct_format.FORMAT_FILE).write_text(contents)
  tokenizer = tok.load_tokenizer(hf.resolve_model_dir("minilm"))
  with pytest.raises(ValueError, match=f"tct_format.json: {message}"):
    tct_format.read_format_file(tmp_path, tokenizer)
  assert tct_format.read_format_file(tmp_path / "absent", tokenizer) is None


def test_the_export_loads_with_the_students_format(smoke_run):
  """`encode.load_towers` on the export (what `eval/retrieval.py --model=` does) encodes as
  the restored checkpoint does: TCT's prefixes, [MASK] padding, the mean after the prefix."""
  from retrieval_jax import encode, recipes  # pylint: disable=g-import-not-at-top
  workdir, _ = smoke_run
  query, passage = encode.load_towers(workdir / "export" / "encoder")
  assert query.pooling.skip_first == passage.pooling.skip_first == 4
  restored, _ = recipes.eval_models(_smoke(), workdir)
  texts = ["a short query", "Another [SEP] text, with a literal [MASK] in it and more words"]
  for loaded, reference, length in ((query, restored.query, 20), (passage, restored.passage, 40)):
    assert loaded.token_ids(texts, length) == reference.token_ids(texts, length)
    np.testing.assert_allclose(
        encode.encode_texts(loaded, texts, max_length=length, progress=False),
        encode.encode_texts(reference, texts, max_length=length, progress=False), atol=1e-6)
  assert query.token_ids(texts, 20)[0][:4] != passage.token_ids(texts, 40)[0][:4]  # [Q] / [D]
  with pytest.raises(ValueError, match="TCT-ColBERT student.*give no pooling"):
    encode.load_towers(workdir / "export" / "encoder", pooling="cls")


def test_teacher_from_a_colbert_directory(tmp_path):
  tokenizer = tok.load_tokenizer(hf.resolve_model_dir("minilm"))
  random_teacher = tct_colbert.Teacher(_smoke().teacher, tokenizer)
  params = random_teacher.frozen_input().load()
  directory = colbert_files.save(tmp_path / "teacher", random_teacher.module.encoder, params,
                                 tokenizer_dir=hf.resolve_model_dir("minilm"),
                                 settings=random_teacher.settings)
  config = _smoke(**{"teacher.name": str(directory)})
  from_dir = tct_colbert.Teacher(config.teacher, tokenizer)
  loaded = from_dir.frozen_input().load()
  np.testing.assert_equal(loaded["token_head"], params["token_head"])
  assert from_dir.format == random_teacher.format
  with pytest.raises(ValueError, match="not a ColBERT"):
    tct_colbert.Teacher(_smoke(**{"teacher.name": str(hf.resolve_model_dir("minilm"))}).teacher,
                        tokenizer)


def test_hard_negatives_then_a_teacher_trained_on_them(tmp_path):
  """`hn` mines with the student's format; HN+ trains ColBERT on that pool; a ColBERT
  training workdir is a teacher."""
  config = with_overrides(tct_config.get_config("smoke"), {})
  config.negatives = tct_config.get_config("hn").negatives
  config.negatives.update(depth=8, bm25_depth=8, encode_batch_size=16)
  config.loss.type = "ce"
  summary = train.run(config, tmp_path / "hn", "train")
  assert summary["step"] == 6
  assert "teacher" not in summary["info"]
  # HN+: a ColBERT teacher fine-tuned on those negatives (negatives.source=pool).
  colbert_run = with_overrides(colbert_config.get_config("smoke"), {
      "train.num_steps": 2, "evals": {}, "train.export": False, "negatives.source": "pool",
      "negatives.pool_from": str(tmp_path / "hn")})
  assert train.run(colbert_run, tmp_path / "colbert_hn", "train")["step"] == 2
  # That ColBERT training workdir as a teacher: its latest checkpoint, its own format.
  tokenizer = tok.load_tokenizer(hf.resolve_model_dir("minilm"))
  teacher = tct_colbert.Teacher(
      _smoke(**{"teacher.name": str(tmp_path / "colbert_hn")}).teacher, tokenizer)
  kernel = teacher.frozen_input().load()["token_head"]["linear"]["kernel"]
  assert kernel.shape == (32, 16) and teacher.format.query_length == 16
  colbert_run.negatives.pool_from = str(tmp_path / "colbert_hn")  # holds no mined pool
  with pytest.raises(ValueError, match="negatives.pool_from"):
    train.run(colbert_run, tmp_path / "colbert_bad", "train")


@pytest.mark.parametrize("overrides, key", [
    ({"loss.type": "mse"}, "loss.type"),
    ({"teacher.name": ""}, "teacher.name"),
    ({"model.pooling": "cls"}, "model.pooling"),
    ({"loss.temperature": 0.0}, "loss.temperature"),
    ({"negatives.source": "file"}, "negatives.source"),
])
def test_invalid_config_fails_before_compiling(tmp_path, monkeypatch, overrides, key):
  assert_rejected_before_compiling(_smoke(**overrides), tmp_path, key, monkeypatch)
