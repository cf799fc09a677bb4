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
