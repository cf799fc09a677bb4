"""`data.articles` sources (data/article_sources.py): each scheme, and errors naming the key."""

import pytest

from retrieval_jax.data import article_sources, articles, synthetic_wiki


def test_jsonl_and_tfds_read_what_was_written(tmp_path):
  written = synthetic_wiki.synthetic_articles(5)
  path = tmp_path / "a.jsonl.gz"
  articles.write_jsonl(path, written)
  assert article_sources.load_articles(f"jsonl:{path}") == written
  assert article_sources.load_articles(f"tfds:{path}", tfds_dir=tmp_path / "tfds") == written


def test_synthetic_articles_link_to_each_other():
  found = article_sources.load_articles("synthetic")
  titles = {a.title for a in found}
  assert len(found) == 24 and all(set(a.links) <= titles for a in found)
  assert all(set(p.links) <= set(a.links) for a in found for p in a.paragraphs)


@pytest.mark.parametrize("source, message", [
    ("books:x", "data.articles='books:x' is not <scheme>"),
    ("jsonl:", "name the article file after 'jsonl:'"),
])
def test_bad_sources_name_the_key(source, message):
  with pytest.raises(ValueError, match=message):
    article_sources.load_articles(source)


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
    article_sources.load_articles(f"jsonl:{tmp_path / 'nothing.jsonl'}")
