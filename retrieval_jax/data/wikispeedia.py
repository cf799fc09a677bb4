"""The Wikispeedia articles with their link graph, as `articles.Article`s (Chang et al.'s input).

Wikispeedia (West & Leskovec; `SOURCE.md` of the data directory) is the 4,604 articles of the 2007
Wikipedia for Schools selection as plain text, plus the page-to-page link graph. Three files:

  * `articles.tsv`: the URL-encoded article names, in order;
  * `plaintext_articles.jsonl.gz`: `{"article": <name>, "text": <the plain-text file>}` per
    article, in the same order;
  * `links.tsv`: `source<TAB>target` name pairs.

Both TSV files open with `#` comment lines. An article's title is its name URL-decoded with
underscores turned into spaces (`Bath%2C_Somerset` -> `Bath, Somerset`), and so are its links.

The plain text is laid out as the dump printed the HTML page: a `#copyright` line, the title line,
the "2007 Schools Wikipedia Selection. Related subjects: ..." banner (1 to 3 lines), then the body
up to a `Retrieved from "..."` footer with the licence notice. These are dropped. In the body,
section headings are lines that are not indented (a block of at most two such lines between
blank lines); everything before the first heading is the lead (section title ""). Prose is
wrapped in lines indented by 3 spaces (4 when the wrap fell on a double space). Paragraphs are the
runs of prose lines between blank lines, after removing the page's non-prose:

  * image captions, which the dump prints twice (`caption` / `Enlarge` / `caption`, or the caption
    lines repeated): any run of 1 to 3 lines immediately repeated, with or without an `Enlarge`
    line between, is removed, as is a stray `Enlarge` line;
  * layout lines: a line indented otherwise than by 3 or 4 spaces (infobox rows, tables,
    bulleted lists, code), a line holding a run of 3 or more spaces inside (table cells), a
    `CAPTION:` line, and an infobox footnote (`^1 ...`) with its wrapped lines. These end a run
    of prose lines, so a paragraph never spans a table;
  * a remaining run of prose lines is a paragraph if it has at least `MIN_WORDS` words and ends
    like a sentence (`.`, `!`, `?` or `:`, maybe followed by closing quotes or brackets). This
    drops gallery captions, table headers, navigation boxes, and the few prose paragraphs the dump
    truncated (the lead of `Cholera` ends "due to poor water infrastructure").

Measured on the whole data set: 68,741 caption lines and 213,991 layout lines removed; of
169,657 runs of prose lines, 9,125 dropped as shorter than 5 words and 14,729 for not ending like
a sentence, leaving 145,803 paragraphs (523,813 sentences, 11.8 M words) in 47,778 sections
(`python -m retrieval_jax.data.wikispeedia` prints these counts). Non-lead sections left without
paragraphs are dropped; the lead is kept even when empty (35 articles: 8 have no paragraph at
all, mostly "List of ... countries" tables), so `sections[0]` is always the lead. A caption line
standing alone between blank lines before the lead is taken for a heading (`Moon`'s lead is
under "The Moon as seen by an observer from Earth"): a heading and a caption look the same.

Paragraph links are string-matched: Wikispeedia keeps no anchors, only which article links to
which, so a paragraph's `links` are the article's targets whose title occurs in its text as whole
words (`Mercury (planet)` also as `Mercury`, and with its first letter lower-cased, as Wikipedia
titles are capitalised where the linked word is often not). Every paragraph mentioning a target
gets it, not only the one holding the real anchor. An article's `links` are all its targets from
`links.tsv` (119,882 in all), whether or not a paragraph mentions them: 77,867 of them
(65%) are mentioned in a paragraph; 79% are mentioned somewhere in the page, the rest only in
the infoboxes, lists and captions dropped above.

No JAX. Loading all 4,604 articles takes 12-14 s of one core here, 5 s of it splitting sentences;
no cache is kept.
"""

from __future__ import annotations

import bisect
import collections
import gzip
import itertools
import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence

from retrieval_jax.data import articles as articles_lib
from retrieval_jax.data import paths
from retrieval_jax.data import sentences as sentences_lib
from retrieval_jax.data.beir_readers import DataError

TEXT_FILE = "plaintext_articles.jsonl.gz"
ARTICLES_FILE = "articles.tsv"
LINKS_FILE = "links.tsv"
MIN_WORDS = 5

_BANNER = "2007 Schools Wikipedia Selection"
_FOOTER = 'Retrieved from "'
_SENTENCE_END = re.compile(r"[.!?:][\"'”’»)\]]*$")
# 3 or 4 spaces, then neither a space, an infobox footnote (`^1`) nor a `CAPTION:` line.
_PROSE_LINE = re.compile(r" {3}(?: (?! ))?(?!\^\d|CAPTION:)\S")
_FOOTNOTE = re.compile(r" *\^\d")
_DISAMBIGUATION = re.compile(r"^(.+?) \([^()]+\)$")


def title_of(name: str) -> str:
  """An article's title from its URL-encoded Wikispeedia name."""
  return urllib.parse.unquote(name).replace("_", " ")


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip(" "))


def _without_captions(lines: list[str]) -> list[str]:
  """`lines` without image captions printed twice (module docstring)."""
  stripped = [line.strip() for line in lines]
  if len(set(stripped)) == len(stripped) and "Enlarge" not in stripped:
    return lines  # Most blocks: nothing repeated, nothing to remove.
  kept, i = [], 0
  while i < len(lines):
    for k in (3, 2, 1):
      first = stripped[i:i + k]
      if len(first) < k:
        continue
      gap = 1 if stripped[i + k:i + k + 1] == ["Enlarge"] else 0
      if stripped[i + k + gap:i + 2 * k + gap] == first:
        i += 2 * k + gap
        break
    else:
      if stripped[i] != "Enlarge":
        kept.append(lines[i])
      i += 1
  return kept


def _is_prose_line(line: str) -> bool:
  return _PROSE_LINE.match(line) is not None and "   " not in line[4:]


def _is_heading(block: list[str]) -> bool:
  return len(block) <= 2 and all(_indent(line) == 0 and "  " not in line for line in block)


def _blocks(lines: Iterable[str]) -> Iterator[list[str]]:
  block = []
  for line in lines:
    if line.strip():
      block.append(line.rstrip())
    elif block:
      yield block
      block = []
  if block:
    yield block


def _body(lines: list[str]) -> list[str]:
  """The lines after the banner (or, without one, after the title) and before the footer."""
  end = next((k for k in range(len(lines) - 1, -1, -1)
              if lines[k].strip().startswith(_FOOTER)), len(lines))
  start = next((k for k, line in enumerate(lines[:end]) if line.startswith(_BANNER)), None)
  if start is None:  # The few non-article pages (donation forms) have no banner.
    start = next((k for k, line in enumerate(lines[:end]) if line.strip() and not _indent(line)),
                 end)
  while start < end and lines[start].strip():
    start += 1
  return lines[start:end]


def _prose_runs(lines: list[str], stats: collections.Counter) -> Iterator[list[str]]:
  """The runs of consecutive prose lines of a block, stripped; counts the other lines."""
  run: list[str] = []
  in_footnote = False
  for line in lines:
    if _FOOTNOTE.match(line):
      in_footnote = True  # Its wrapped lines look like prose: drop them up to the next layout.
    elif not _is_prose_line(line):
      in_footnote = False
    elif not in_footnote:
      run.append(line.strip())
      continue
    stats["layout_lines"] += 1
    if run:
      yield run
      run = []
  if run:
    yield run


def parse_text(text: str, stats: collections.Counter | None = None
               ) -> list[tuple[str, list[str]]]:
  """An article's plain text as (section title, paragraph texts), the lead first (title "").

  Args:
    text: one `plaintext_articles` text.
    stats: when given, counts `paragraphs`, and per rule the candidate runs it drops
      (`dropped_short`, `dropped_no_sentence_end`) and the lines it removes
      (`caption_lines`, `layout_lines`).
  """
  stats = collections.Counter() if stats is None else stats
  sections: list[tuple[str, list[str]]] = [("", [])]
  for block in _blocks(_body(text.split("\n"))):
    if _is_heading(block):
      sections.append((" ".join(line.strip() for line in block), []))
      continue
    lines = _without_captions(block)
    stats["caption_lines"] += len(block) - len(lines)
    for run in _prose_runs(lines, stats):
      words = " ".join(run).split()
      if len(words) < MIN_WORDS:
        stats["dropped_short"] += 1
      elif not _SENTENCE_END.search(words[-1]):
        stats["dropped_no_sentence_end"] += 1
      else:
        sections[-1][1].append(" ".join(words))
        stats["paragraphs"] += 1
  return [sections[0]] + [s for s in sections[1:] if s[1]]


def _variants(title: str) -> set[str]:
  """The strings that count as a mention of `title` (module docstring); none for ""."""
  if not title:
    return set()
  forms = {title}
  bare = _DISAMBIGUATION.match(title)
  if bare:
    forms.add(bare.group(1))
  return forms | {f[0].lower() + f[1:] for f in forms}


def _mentions(text: str, needle: str) -> Iterator[int]:
  """The offsets at which `needle` occurs in `text` as whole words."""
  start = text.find(needle)
  while start >= 0:
    end = start + len(needle)
    if ((start == 0 or not text[start - 1].isalnum())
        and (end == len(text) or not text[end].isalnum())):
      yield start
    start = text.find(needle, start + 1)


def paragraph_links(paragraphs: Sequence[str], targets: Sequence[str],
                    mention_forms: dict[str, set[str]] | None = None) -> list[tuple[str, ...]]:
  """For each paragraph, the `targets` it mentions, in `targets` order (module docstring).

  Args:
    paragraphs: an article's paragraph texts.
    targets: the titles the article links to.
    mention_forms: title -> the strings that mention it; `_variants(title)` when absent.
  """
  mention_forms = mention_forms or {}
  # One pass over the article per form, each match assigned to its paragraph by its offset:
  # most targets are mentioned in few paragraphs or none.
  whole = "\n".join(paragraphs)
  starts = list(itertools.accumulate((len(p) + 1 for p in paragraphs[:-1]), initial=0))
  found: list[set[str]] = [set() for _ in paragraphs]
  for target in targets:
    for form in mention_forms.get(target) or _variants(target):
      for offset in _mentions(whole, form):
        found[bisect.bisect_right(starts, offset) - 1].add(target)
  order = {t: i for i, t in reversed(list(enumerate(targets)))}
  return [tuple(sorted(f, key=order.__getitem__)) for f in found]


def _data_lines(path: paths.AnyPath) -> Iterator[tuple[int, str]]:
  """(line number, line) of a TSV file, without its `#` comments and blank lines."""
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\n")
      if line.strip() and not line.startswith("#"):
        yield number, line


def _require(directory: paths.AnyPath, name: str) -> paths.AnyPath:
  path = directory / name
  if not path.exists():
    raise FileNotFoundError(f"Wikispeedia file {path} does not exist")
  return path


def read_articles(directory: str | os.PathLike = "wikispeedia", splitter: str = "blingfire", *,
                  stats: collections.Counter | None = None) -> list[articles_lib.Article]:
  """Every Wikispeedia article, in `articles.tsv` order (module docstring).

  Args:
    directory: the data directory, or a data set name looked up like the others
      (`paths.find_dataset`: `$RETRIEVAL_JAX_DATA`, then `../shared/data`).
    splitter: the sentence splitter (`sentences.SPLITTERS`).
    stats: when given, receives the counts of `parse_text` summed over all articles, and
      `articles`, `links` and `located_links` (links found in at least one paragraph).

  Raises:
    FileNotFoundError: Naming the directory or the file that is missing.
    DataError: A malformed line, naming the file and the line.
    ValueError: An unknown `splitter`.
  """
  sentences_lib.check_splitter(splitter)
  root = paths.find_dataset(directory)
  if root is None:
    raise FileNotFoundError(f"no Wikispeedia directory {os.fspath(directory)!r} (looked in "
                            f"{[str(r) for r in paths.search_roots()]})")
  stats = collections.Counter() if stats is None else stats
  names_path = _require(root, ARTICLES_FILE)
  names = [(number, line.strip()) for number, line in _data_lines(names_path)]
  targets = _read_links(_require(root, LINKS_FILE), [name for _, name in names])
  texts = _read_texts(_require(root, TEXT_FILE), names, names_path)
  # A target is also mentioned by the title its page displays (`AC/DC` for `AC_DC`).
  forms = {title_of(name): _variants(title_of(name)) | _variants(_displayed_title(text))
           for (_, name), text in zip(names, texts)}
  result = []
  for (_, name), text, article_targets in zip(names, texts, targets):
    sections = parse_text(text, stats)
    located = iter(paragraph_links([p for _, ps in sections for p in ps], article_targets, forms))
    article = articles_lib.Article(title_of(name), tuple(
        articles_lib.Section(section_title, tuple(
            articles_lib.Paragraph(tuple(sentences_lib.split_sentences(p, splitter)),
                                   next(located))
            for p in paragraphs))
        for section_title, paragraphs in sections), tuple(article_targets))
    stats["links"] += len(article_targets)
    stats["located_links"] += len({t for p in article.paragraphs for t in p.links})
    result.append(article)
  stats["articles"] += len(result)
  return result


def _read_links(path: paths.AnyPath, names: list[str]) -> list[list[str]]:
  """Each article's link targets (titles), in `links.tsv` order."""
  position = {name: i for i, name in enumerate(names)}
  targets: list[list[str]] = [[] for _ in names]
  for number, line in _data_lines(path):
    fields = line.split("\t")
    if len(fields) != 2 or fields[0] not in position:
      problem = ("not 'source<TAB>target'" if len(fields) != 2
                 else f"source {fields[0]!r} is not in {ARTICLES_FILE}")
      raise DataError(f"{path}, line {number}: {problem}: {line!r:.80}")
    targets[position[fields[0]]].append(title_of(fields[1]))
  return targets


def _read_texts(path: paths.AnyPath, names: list[tuple[int, str]],
                names_path: paths.AnyPath) -> list[str]:
  """The article texts, checked to be those of `names` (line number, name), in order."""
  texts = []
  # Through `path.open`: the directory may be remote (`gs://...`).
  with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      try:
        record = json.loads(line)
        name, text = record["article"], record["text"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}, line {number}: not an article record: {e!r}") from None
      if number > len(names):
        raise DataError(f"{path}, line {number}: article {name!r} is not in {names_path}, "
                        f"which lists {len(names)}")
      if name != names[number - 1][1]:
        raise DataError(f"{path}, line {number}: article {name!r}, but {names_path}, line "
                        f"{names[number - 1][0]} lists {names[number - 1][1]!r} there")
      texts.append(text)
  if len(texts) != len(names):
    raise DataError(f"{path}: {len(texts)} articles, but {names_path} lists {len(names)}")
  return texts


def _displayed_title(text: str) -> str:
  """The title line above the banner ("" when there is no banner)."""
  lines = text.split("\n")[:12]
  end = next((k for k, line in enumerate(lines) if line.startswith(_BANNER)), 0)
  return next((line.strip() for line in lines[:end]
               if line.strip() and line.strip() != "#copyright" and not _indent(line)), "")


def main() -> None:
  """Loads every article and prints the time and the counts of what each rule kept or dropped."""
  import time  # pylint: disable=g-import-not-at-top
  stats: collections.Counter = collections.Counter()
  start = time.perf_counter()
  loaded = read_articles(stats=stats)
  print(f"{len(loaded)} articles in {time.perf_counter() - start:.1f} s")
  for key, value in sorted(stats.items()):
    print(f"{key}: {value}")


if __name__ == "__main__":
  main()
