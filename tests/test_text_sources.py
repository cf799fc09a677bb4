"""data/text_sources.py: unlabelled corpora for pre-training, with errors that name the input."""

import gzip
import json

import pytest

from retrieval_jax.data import beir_readers, text_sources


def test_beir_corpus_texts_are_title_and_text(scifact_dir):
  texts = text_sources.read_texts(f"beir:{scifact_dir}")
  assert len(texts) == 5183
  first = next(beir_readers.iter_corpus(beir_readers.locate_files(scifact_dir).corpus))
  assert texts[0] == f"{first[2]} {first[3]}".strip()


def test_wikispeedia_articles_without_header_and_banner(wikispeedia_dir):
  texts = text_sources.read_texts(f"wikispeedia:{wikispeedia_dir}")
  assert len(texts) == 4604
  assert not any("#copyright" in t.split("\n", 1)[0] for t in texts)
  assert not any("2007 Schools Wikipedia Selection" in t for t in texts[:200])
  assert texts[0].startswith("Áedán mac Gabráin\n")


def test_wikispeedia_cleaning_on_a_record(tmp_path):
  record = {"article": "A", "text": "   #copyright\n\nTitle\n\n2007 Schools Wikipedia Selection. "
                                    "Related subjects: X\n\n   Body   text\n   goes on.\n"}
  with gzip.open(tmp_path / "plaintext_articles.jsonl.gz", "wt", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")
  assert text_sources.read_texts(f"wikispeedia:{tmp_path}") == ["Title\nBody text goes on."]


def test_jsonl_texts_and_line_numbered_errors(tmp_path):
  path = tmp_path / "texts.jsonl"
  path.write_text('{"text": "one"}\n\n{"title": "T", "text": "two"}\n')
  assert text_sources.read_texts(f"jsonl:{path}") == ["one", "T two"]
  path.write_text('{"text": "one"}\n{"text": 3}\n')
  with pytest.raises(beir_readers.DataError, match=r"texts.jsonl, line 2: field 'text'"):
    text_sources.read_texts(f"jsonl:{path}")
  path.write_text('{"text": "one"}\nnot json\n')
  with pytest.raises(beir_readers.DataError, match=r"line 2: invalid JSON"):
    text_sources.read_texts(f"jsonl:{path}")


@pytest.mark.parametrize("source, error, message", [
    ("books:x", ValueError, "data.sources: 'books:x' is not <scheme>:<where>"),
    ("beir:", ValueError, "needs a data set name"),
    ("beir:no_such_set", FileNotFoundError, "no BEIR data set 'no_such_set'"),
    ("jsonl:/no/such.jsonl", FileNotFoundError, "no JSONL file"),
    ("wikispeedia:/no/such/dir", FileNotFoundError, "no plaintext_articles.jsonl.gz"),
])
def test_bad_sources_are_named(source, error, message):
  with pytest.raises(error, match=message):
    text_sources.read_texts(source)


def _prepare_local_wikipedia(data_dir, articles):
  """TFDS `wikipedia/20230601.en` prepared as array_record from `articles`, without its dumps.

  The real builder downloads the dumps and parses them with Apache Beam; this one has the same
  name, config, version and features, so `tfds.builder("wikipedia/20230601.en")` then opens
  these files exactly as it opens a real preparation.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.text import wikipedia  # pylint: disable=g-import-not-at-top

  config = next(c for c in wikipedia.Wikipedia.BUILDER_CONFIGS if c.name == "20230601.en")

  class LocalWikipedia(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "wikipedia"
    VERSION = wikipedia.Wikipedia.VERSION
    BUILDER_CONFIGS = [config]

    def _info(self):
      return wikipedia.Wikipedia._info(self)  # pylint: disable=protected-access

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, (title, text) in enumerate(articles):
        yield i, {"title": title, "text": text}

  options = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
  LocalWikipedia(config="20230601.en", data_dir=str(data_dir),
                 file_format="array_record").download_and_prepare(download_config=options)


def test_tfds_wikipedia_is_read_through_its_builder(tmp_path):
  articles = [(f"Title {i}", f"Body of article {i}.") for i in range(10)]
  _prepare_local_wikipedia(tmp_path, articles)
  texts = text_sources.read_texts("tfds:wikipedia/20230601.en", tfds_dir=tmp_path)
  # TFDS shuffles examples by key when it writes them: compare as sets.
  assert sorted(texts) == sorted(f"{t} {b}" for t, b in articles)
  half = text_sources.read_texts("tfds:wikipedia/20230601.en@train[:50%]", tfds_dir=tmp_path)
  assert len(half) == 5 and set(half) <= set(texts)
  with pytest.raises(ValueError, match=r"data.sources\[1\].*split 'validation'"):
    text_sources.read_texts("tfds:wikipedia/20230601.en@validation", tfds_dir=tmp_path,
                            key="data.sources[1]")


def test_tfds_source_errors_name_the_key(tmp_path):
  with pytest.raises(ValueError, match="data.sources: no TFDS data set 'no_such_corpus'"):
    text_sources.read_texts("tfds:no_such_corpus", tfds_dir=tmp_path)
  with pytest.raises(ValueError, match="needs a TFDS name"):
    text_sources.read_texts("tfds:", tfds_dir=tmp_path)
  with pytest.raises(ValueError, match="must be on a local disk"):
    text_sources.read_texts("tfds:wikipedia/20230601.en", tfds_dir="gs://bucket/tfds")
