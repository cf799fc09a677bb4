"""The `sts` evaluator: sentence-transformers' numbers on the same embeddings, the registry path."""

import json
import types

import ml_collections
import numpy as np
import pytest

from retrieval_jax import encode, evaluators, run_config
from retrieval_jax.data import stsb
from retrieval_jax.evaluators import sts as sts_evaluator
from retrieval_jax.recipes import base
from tests import helpers


def st_evaluator_class():
  """sentence-transformers' `EmbeddingSimilarityEvaluator` (or a skip when not installed)."""
  pytest.importorskip("sentence_transformers")
  # pylint: disable=g-import-not-at-top
  try:
    from sentence_transformers.sentence_transformer import evaluation
  except ImportError:  # sentence-transformers < 6 keeps it here
    from sentence_transformers import evaluation
  return evaluation.EmbeddingSimilarityEvaluator


class FixedModel:
  """What `EmbeddingSimilarityEvaluator` calls on a model, with fixed embeddings by sentence."""
  similarity_fn_name = "cosine"

  def __init__(self, table: dict[str, np.ndarray]):
    self.table = table
    self.model_card_data = types.SimpleNamespace(set_evaluation_metrics=lambda *args: None)

  def encode(self, sentences, **kwargs):
    assert kwargs.get("normalize_embeddings") is False  # the raw vectors reach the cosine
    return np.stack([self.table[s] for s in sentences])


def fixed_data(seed: int = 0, n: int = 120, dim: int = 12):
  """(lines of an STS-B file, sentence -> float32 vector): scores in steps of 0.2 (ties, as
  STS-B), second sentences nearer the first for higher scores, some first sentences repeated.

  No two pairs have equal cosines: sentence-transformers computes them in float32, which would
  break such ties at random (`sts.cosine_scores`).
  """
  rng = np.random.default_rng(seed)
  scores = np.round(rng.uniform(0, 5, n) * 5) / 5
  table, lines = {}, []
  for i, score in enumerate(scores):
    first = f"sentence {i % 90} \"quoted\""  # pairs 90.. reuse earlier first sentences
    table.setdefault(first, rng.normal(size=dim).astype(np.float32))
    second = f"other {i}"
    noise = rng.normal(size=dim).astype(np.float32)
    table.setdefault(second, table[first] + (5.5 - score) * 0.4 * noise)
    lines.append(f"main-news\theadlines\t2016\t{i:04d}\t{score:.3f}\t{first}\t{second}")
  return lines, table


def test_correlations_equal_sentence_transformers_on_fixed_embeddings(tmp_path, monkeypatch):
  evaluator_class = st_evaluator_class()
  lines, table = fixed_data()
  (tmp_path / "sts-dev.csv").write_text("\n".join(lines) + "\n")
  pairs = stsb.load_pairs(tmp_path, "dev")
  reference = evaluator_class(pairs.sentence1, pairs.sentence2, pairs.scores.tolist(),
                              write_csv=False)(FixedModel(table))
  # Our evaluator end to end, its encoder replaced by the same table.
  monkeypatch.setattr(sts_evaluator.encode, "encode_texts_sharded",
                      lambda encoder, texts, **kwargs: np.stack([table[t] for t in texts]))
  entry = ml_collections.ConfigDict({"type": "sts", "data": str(tmp_path), "progress": False})
  values = evaluators.build("sts", entry).run(base.EvalModels(query=object()), None)
  assert set(values) == {"spearman", "pearson"}
  # The cosines differ by float32 rounding only (see `fixed_data`).
  assert values["spearman"] == pytest.approx(100 * reference["spearman_cosine"], abs=1e-9)
  assert values["pearson"] == pytest.approx(100 * reference["pearson_cosine"], abs=1e-5)
  assert 30 < values["spearman"] < 100  # a correlation the test can tell from noise


def test_cosine_of_a_zero_vector_is_zero():
  left = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
  right = np.array([[2.0, 0.0], [1.0, 1.0], [-3.0, -4.0]])
  np.testing.assert_allclose(sts_evaluator.cosine_scores(left, right), [1.0, 0.0, -1.0])
  with pytest.raises(ValueError, match="at least 2 pairs"):
    sts_evaluator.correlations(np.array([1.0]), np.array([0.5]))


def _entry(data, **settings):
  return ml_collections.ConfigDict({"type": "sts", "data": str(data), "split": "dev",
                                    "max_length": 32, "batch_size": 8, "progress": False,
                                    **settings})


def test_through_the_registry_with_a_tiny_model(tmp_path, minilm_dir):
  from tests.test_stsb_data import TINY_LINES, write_split  # pylint: disable=g-import-not-at-top

  write_split(tmp_path / "stsb", "dev", TINY_LINES + [
      "main-forum\tdeft-forum\t2014\t0002\t1.0\tThe cat sat on the mat.\tA dog barked."])
  model_dir, _, _ = helpers.write_tiny_bert(tmp_path / "bert", minilm_dir)
  encoder = encode.load_encoder(model_dir)
  config = ml_collections.ConfigDict({"evals": {"sts_dev": _entry(tmp_path / "stsb")}})
  (evaluator,) = evaluators.build_all(config)
  assert evaluator.requires == ("query",)
  with pytest.raises(ValueError, match=r"needs the model roles \['query'\]"):
    evaluators.check_models(evaluator, base.EvalModels(), "r")
  values = evaluators.run_all([evaluator], base.EvalModels(query=encoder), tmp_path / "out")
  out = tmp_path / "out" / "sts_dev"
  written = json.loads((out / "metrics.json").read_text())
  assert values == {f"sts_dev/{key}": value for key, value in written.items()}
  assert set(written) == {"spearman", "pearson"}
  rows = [line.split("\t") for line in (out / "scores.tsv").read_text().splitlines()[1:]]
  gold = np.array([float(r[1]) for r in rows])
  cosines = np.array([float(r[2]) for r in rows])
  pairs = evaluator.pairs
  np.testing.assert_array_equal(gold, pairs.scores)
  # Each side encoded on its own, as sentence-transformers' evaluator does.
  left = encode.encode_texts(encoder, pairs.sentence1, max_length=32, progress=False)
  right = encode.encode_texts(encoder, pairs.sentence2, max_length=32, progress=False)
  np.testing.assert_allclose(cosines, sts_evaluator.cosine_scores(left, right), atol=1e-5)
  assert written == pytest.approx(sts_evaluator.correlations(gold, cosines))
  info = json.loads((out / "eval_info.json").read_text())
  assert info["pairs"] == 5 and info["settings"]["role"] == "query"


def test_another_role_and_tfds_source(tmp_path, monkeypatch):
  from tests.test_stsb_data import TINY_LINES, write_split  # pylint: disable=g-import-not-at-top

  write_split(tmp_path / "stsb", "test", TINY_LINES)
  rng = np.random.default_rng(0)
  monkeypatch.setattr(sts_evaluator.encode, "encode_texts_sharded",
                      lambda encoder, texts, **kwargs: rng.normal(size=(len(texts), 4)))
  entry = _entry(f"tfds:{tmp_path / 'stsb'}", split="test", role="passage",
                 tfds_dir=str(tmp_path / "tfds"))
  evaluator = evaluators.build("e", entry)
  assert evaluator.requires == ("passage",)
  assert len(evaluator.pairs) == 4
  assert set(evaluator.run(base.EvalModels(passage=object()), None)) == {"spearman", "pearson"}


@pytest.mark.parametrize("key,value,message", [
    ("split", "validation", r"evals\.e\.split='validation' is not one of"),
    ("max_length", 0, r"evals\.e\.max_length=0 is below 1"),
    ("name", "scifact", r"evals\.e has unknown keys \['name'\]"),
])
def test_bad_entries_name_the_key(tmp_path, key, value, message):
  entry = _entry(tmp_path)
  entry[key] = value
  with pytest.raises(ValueError, match=message):
    evaluators.build("e", entry)


def test_missing_data_fails_on_first_use(tmp_path):
  evaluator = evaluators.build("e", _entry(tmp_path / "nope"))
  with pytest.raises(run_config.InputError,  # the user's input: one line from main.py
                     match="STS-B data .*nope.* is not a directory") as raised:
    evaluator.pairs  # pylint: disable=pointless-statement
  assert isinstance(raised.value.__cause__, FileNotFoundError)
