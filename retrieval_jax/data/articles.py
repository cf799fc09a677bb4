"""Wikipedia-style articles with their links: the input of Chang et al.'s pre-training tasks.

The format (one JSON object per line, UTF-8; `write_jsonl` / `read_jsonl`):

  {"title": "Áedán mac Gabráin",
   "links": ["Great Britain", "Ireland", ...],          # every article this one links to
   "sections": [
     {"title": "",                                        # "" for the lead (first) section
      "paragraphs": [
        {"sentences": ["Áedán mac Gabráin was king of Dál Riata ...", "He was ..."],
         "links": ["Dál Riata", "Columba"]},             # targets linked from this paragraph
        ...]},
     {"title": "Background", "paragraphs": [...]}]}

Titles are the targets' display titles (spaces, not underscores; no URL encoding), so a
link names an article of the same collection by its `title`; links to articles outside the
collection may stay and are ignored by the pair generators. Paragraphs are stored already
split into sentences (`data.sentences`), so every task sees the same sentences. The first
section is the article's lead (Chang et al.'s "first section"). An article's `links` is a
superset of its paragraphs' links: a source may know that A links to B without knowing from
which paragraph (Wikispeedia's link graph).

Producers: `data.wikispeedia` (the Wikispeedia articles and link graph), `data.wikipedia_dump`
(a MediaWiki XML dump), `data.articles_tfds` (a TFDS builder over a JSONL file). No JAX.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Iterable, Iterator, Sequence

from etils import epath

from retrieval_jax.data.beir_readers import DataError


@dataclasses.dataclass(frozen=True)
class Paragraph:
  sentences: tuple[str, ...]
  links: tuple[str, ...] = ()

  @property
  def text(self) -> str:
    return " ".join(self.sentences)


@dataclasses.dataclass(frozen=True)
class Section:
  title: str
  paragraphs: tuple[Paragraph, ...]


@dataclasses.dataclass(frozen=True)
class Article:
  title: str
  sections: tuple[Section, ...]
  links: tuple[str, ...] = ()

  @property
  def paragraphs(self) -> list[Paragraph]:
    """Every paragraph of the article, in order."""
    return [p for s in self.sections for p in s.paragraphs]

  def to_json(self) -> dict:
    return {"title": self.title, "links": list(self.links),
            "sections": [{"title": s.title,
                          "paragraphs": [{"sentences": list(p.sentences), "links": list(p.links)}
                                         for p in s.paragraphs]}
                         for s in self.sections]}


def _strings(value, what: str) -> tuple[str, ...]:
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise ValueError(f"{what} must be a list of strings")
  return tuple(value)


def article_from_json(record: dict) -> Article:
  """An `Article` from its JSON object.

  Raises:
    ValueError: Naming the field that is missing or of the wrong type.
  """
  if not isinstance(record, dict):
    raise ValueError("an article must be a JSON object")
  title = record.get("title")
  if not isinstance(title, str) or not title:
    raise ValueError("'title' must be a non-empty string")
  sections = record.get("sections")
  if not isinstance(sections, list):
    raise ValueError("'sections' must be a list")
  parsed = []
  for i, section in enumerate(sections):
    if not isinstance(section, dict) or not isinstance(section.get("paragraphs"), list):
      raise ValueError(f"sections[{i}] must be an object with a 'paragraphs' list")
    paragraphs = []
    for j, paragraph in enumerate(section["paragraphs"]):
      where = f"sections[{i}].paragraphs[{j}]"
      if not isinstance(paragraph, dict):
        raise ValueError(f"{where} must be an object")
      paragraphs.append(Paragraph(_strings(paragraph.get("sentences"), f"{where}.sentences"),
                                  _strings(paragraph.get("links", []), f"{where}.links")))
    section_title = section.get("title", "")
    if not isinstance(section_title, str):
      raise ValueError(f"sections[{i}].title must be a string")
    parsed.append(Section(section_title, tuple(paragraphs)))
  return Article(title, tuple(parsed), _strings(record.get("links", []), "'links'"))


def _open_text(path: epath.Path, mode: str):
  if path.name.endswith(".gz"):
    return gzip.open(path.open(mode + "b"), mode + "t", encoding="utf-8")
  return path.open(mode, encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> list[Article]:
  """Every article of a JSONL file (`.gz` read through gzip).

  Raises:
    FileNotFoundError: When `path` does not exist.
    DataError: A bad line, naming the file and the line number.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"articles file {path} does not exist")
  return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike) -> Iterator[Article]:
  """The articles of a JSONL file, one at a time (see `read_jsonl`)."""
  path = epath.Path(path)
  with _open_text(path, "r") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        yield article_from_json(json.loads(line))
      except (ValueError, json.JSONDecodeError) as e:
        raise DataError(f"{path}:{number}: {e}") from None


def write_jsonl(path: str | os.PathLike, articles: Iterable[Article]) -> int:
  """Writes `articles` as JSONL (gzip when the name ends in `.gz`); returns how many."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  count = 0
  with _open_text(path, "w") as f:
    for article in articles:
      f.write(json.dumps(article.to_json(), ensure_ascii=False) + "\n")
      count += 1
  return count


def by_title(articles: Sequence[Article]) -> dict[str, int]:
  """Title -> position; the first of duplicate titles wins."""
  index: dict[str, int] = {}
  for i, article in enumerate(articles):
    index.setdefault(article.title, i)
  return index
