"""data/articles_tfds.py: article JSONL through TFDS (array_record, no TensorFlow) and back."""

import json

import pytest

from retrieval_jax.data import articles, articles_tfds, beir_readers

A, P, S = articles.Article, articles.Paragraph, articles.Section

ARTICLES = [
    A("Áedán mac Gabráin", (
        S("", (P(("Áedán was king of Dál Riata.", "He was a contemporary of Columba."),
                 ("Dál Riata", "Columba")),
               P(("One sentence, no links.",)))),
        S("Background", (P(("The sources include Bede.",), ("Bede",)),)),
        S("Neighbours", (P(("Emoji 🙂 and \"quotes\" and a tab\tinside.",), ("Dál Riata",)),))),
      links=("Bede", "Columba", "Dál Riata", "Isle of Man")),
    # An empty lead, and a section without paragraphs (the format allows both).
    A("Moon", (S("", ()), S("Orbit", (P(("The Moon orbits Earth.",), ("Earth",)),)),
               S("Empty", ())), links=("Earth",)),
    A("No links", (S("", (P(("Just text.",)),)),)),
    A("No sections", ()),
]


def _write(path, items=ARTICLES):
  articles.write_jsonl(path, items)
  return path


@pytest.fixture
def generations(monkeypatch):
  """The sources the builder actually generates examples from (not when reusing)."""
  calls = []
  original = articles_tfds.ArticlesBuilder._split_generators

  def spy(self, dl_manager):
    calls.append(self.builder_config.source)
    return original(self, dl_manager)

  monkeypatch.setattr(articles_tfds.ArticlesBuilder, "_split_generators", spy)
  return calls


@pytest.mark.parametrize("name", ["articles.jsonl", "articles.jsonl.gz"])
def test_round_trip_equals_read_jsonl(tmp_path, name):
  path = _write(tmp_path / name)
  loaded = articles_tfds.load_articles(path, tmp_path / "tfds")
  assert loaded == articles.read_jsonl(path) == ARTICLES


def test_encode_decode_without_tfds():
  for article in ARTICLES:
    assert articles_tfds.decode(articles_tfds.encode(article)) == article
  record = articles_tfds.encode(ARTICLES[0])
  assert record["section_sizes"] == [2, 1, 1] and record["paragraph_sizes"] == [2, 1, 1, 1]
  assert record["paragraph_link_counts"] == [2, 0, 1, 1]


def test_features_and_random_access(tmp_path):
  builder = articles_tfds.prepare(_write(tmp_path / "a.jsonl"), tmp_path / "tfds")
  assert set(builder.info.features) == {
      "title", "links", "section_titles", "section_sizes", "paragraph_sizes",
      "paragraph_link_counts", "sentences", "paragraph_links"}
  assert str(builder.info.file_format.value) == "array_record"
  source = builder.as_data_source(split="train")
  assert len(source) == len(ARTICLES)
  assert source[1]["title"] == b"Moon"  # File order kept.
  assert articles_tfds.decode(source[1]) == ARTICLES[1]


def test_prepared_once_and_again_when_the_file_changes(tmp_path, generations):
  path, data_dir = _write(tmp_path / "a.jsonl"), tmp_path / "tfds"
  assert articles_tfds.load_articles(path, data_dir) == ARTICLES
  assert articles_tfds.load_articles(path, data_dir) == ARTICLES
  assert len(generations) == 1  # Reused, not rebuilt.
  _write(path, ARTICLES[:2])
  assert articles_tfds.load_articles(path, data_dir) == ARTICLES[:2]
  assert len(generations) == 2
  other = _write(tmp_path / "b" / "a.jsonl")
  assert articles_tfds.config_for(other).name != articles_tfds.config_for(path).name
  assert articles_tfds.config_for(path).name.startswith("a-")


def test_errors_name_the_input(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
    articles_tfds.load_articles(tmp_path / "missing.jsonl", tmp_path / "tfds")
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(ARTICLES[2].to_json()) + "\n" + '{"title": 3}\n')
  with pytest.raises(beir_readers.DataError, match=r"bad.jsonl:2: 'title' must be"):
    articles_tfds.load_articles(bad, tmp_path / "tfds")
  with pytest.raises(ValueError, match="must be on a local disk"):
    articles_tfds.load_articles(_write(tmp_path / "a.jsonl"), "gs://bucket/tfds")
