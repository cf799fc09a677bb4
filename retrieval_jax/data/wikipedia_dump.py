r"""A MediaWiki XML dump (`pages-articles.xml[.bz2]`) to the article JSONL of `data.articles`.

  python -m retrieval_jax.data.wikipedia_dump --dump=enwiki-latest-pages-articles.xml.bz2 \
      --out=articles.jsonl.gz [--limit=1000] [--splitter=pysbd]

The dump is streamed (`xml.etree.ElementTree.iterparse`, each page cleared once read, bz2 or gzip
decompressed on the fly), so memory stays bounded whatever its size. Kept: pages of namespace 0
that are neither redirects nor disambiguation pages (a `{{disambiguation}}`-like template: lists
of other articles, no text of their own) and keep at least one paragraph. Each page's wikitext
is parsed with mwparserfromhell:

  * sections: the lead (title "") and one section per level-2 heading (`== X ==`; a level-1
    heading counts as level 2). Deeper headings (`=== Y ===`) stay inside their level-2
    section: their title is dropped and they end a paragraph. Chang et al.'s tasks need an
    article's first section and its passages, and sub-sections would cut Wikipedia's sections
    into many short ones (Wikispeedia's plain text has no levels: there every heading is one);
  * removed with everything inside them (so their links are not the paragraph's): templates,
    `<ref>` and other tags whose text MediaWiki does not show in the prose (`<gallery>`,
    `<math>`, `<references>`, ...), tables (`{| ... |}` and `<table>`), comments, file, image,
    media and category links, interlanguage links, `__MAGIC__` words, and list, definition and
    indented lines (`*`, `#`, `;`, `:`), which are not prose;
  * paragraphs: the text between blank lines (a heading ends one too), as MediaWiki renders
    it (`strip_code`: bold, italics and HTML entities resolved, a link shown as its anchor
    text), split into sentences by `data.sentences`; empty ones are dropped;
  * a paragraph's `links`: the targets of its wikilinks, in order, once each:
    `[[Target|anchor]]` -> "Target", first letter upper-cased, underscores as spaces, the
    `#section` fragment dropped (a link to a section of its own page is no link). Links to
    other namespaces (`Wikipedia:`, `Help:`, `wikt:` and the namespaces the dump's `siteinfo`
    lists) keep their anchor text but are no article links. An article's `links` are the union
    of its paragraphs', in order.

Link targets are kept as written: a link to a redirect names the redirect, not its target.
One process converts about 900 short pages a second here (mwparserfromhell dominates).
"""

from __future__ import annotations

import bz2
import collections
import dataclasses
import gzip
import html
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from absl import app
from absl import flags
from etils import epath
import mwparserfromhell
from mwparserfromhell import nodes as mw_nodes
from mwparserfromhell import wikicode as mw_wikicode
import tqdm

from retrieval_jax.data import articles as articles_lib
from retrieval_jax.data import paths
from retrieval_jax.data import sentences as sentences_lib
from retrieval_jax.data.beir_readers import DataError

# Prefixes whose links are removed with their text (they render as images or page metadata).
REMOVED_NAMESPACES = frozenset({"file", "image", "media", "category"})
# Namespaces of English Wikipedia and common interwiki prefixes: links to them are no article
# links. A dump adds its own namespaces from `siteinfo`.
OTHER_NAMESPACES = frozenset({
    "talk", "user", "user talk", "wikipedia", "wikipedia talk", "wp", "project", "mediawiki",
    "template", "help", "portal", "draft", "module", "special", "timedtext", "book",
    "wiktionary", "wikt", "wikisource", "s", "wikiquote", "q", "commons", "wikibooks", "b",
    "wikinews", "n", "wikiversity", "v", "wikivoyage", "voy", "meta", "m", "species", "d",
    "wikidata", "mw", "foundation", "wmf", "c"})
# Tags whose contents MediaWiki does not render as prose.
_REMOVED_TAGS = frozenset({"ref", "references", "gallery", "table", "math", "chem", "score",
                           "timeline", "imagemap", "graph", "syntaxhighlight", "source", "pre",
                           "nowiki", "templatedata", "inputbox", "categorytree", "mapframe"})
_LIST_MARKUP = frozenset({"*", "#", ";", ":"})
_LANGUAGE_PREFIX = re.compile(r"^[a-z]{2,3}(?:-[a-z]+)*$")  # `de:`, `zh-min-nan:`.
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_DISAMBIGUATION = re.compile(r"disambig|^(?:dab|disamb|hndis|geodis)$")


@dataclasses.dataclass(frozen=True)
class Page:
  """One `<page>` of a dump: its title, namespace, whether it redirects, its latest text."""
  title: str
  namespace: int
  redirect: bool
  text: str


def _local(tag: str) -> str:
  return tag.rsplit("}", 1)[-1]  # `{http://www.mediawiki.org/xml/export-0.10/}page` -> `page`.


def _child_text(element: ET.Element, name: str) -> str:
  found = next((c for c in element if _local(c.tag) == name), None)
  return "" if found is None or found.text is None else found.text


def _open_binary(path: paths.AnyPath):
  raw = path.open("rb")
  if path.name.endswith(".bz2"):
    return raw, bz2.BZ2File(raw)
  if path.name.endswith(".gz"):
    return raw, gzip.GzipFile(fileobj=raw)
  return raw, raw


def iter_pages(dump: str | os.PathLike, namespaces: set[str] | None = None,
               progress: tqdm.tqdm | None = None) -> Iterator[Page]:
  """The pages of a dump, streamed; every export schema version is read alike.

  Args:
    dump: the `.xml`, `.xml.bz2` or `.xml.gz` file.
    namespaces: when given, receives the lower-cased names of the dump's namespaces.
    progress: when given, advanced by the compressed bytes read.

  Raises:
    FileNotFoundError: When `dump` does not exist.
    DataError: Malformed XML or a non-integer `<ns>`, naming the file and the line.
  """
  path = paths.user_path(dump)
  if not path.exists():
    raise FileNotFoundError(f"dump file {path} does not exist")
  raw, stream = _open_binary(path)
  with raw, stream:
    events = ET.iterparse(stream, events=("start", "end"))
    root = None
    try:
      for event, element in events:
        if root is None:
          root = element
        if event != "end":
          continue
        name = _local(element.tag)
        if name == "namespace" and namespaces is not None and element.text:
          namespaces.add(element.text.strip().lower())
        elif name == "page":
          page = _page(element, path)
          root.clear()  # Drops this page (and any earlier element) from the tree.
          if progress is not None:
            progress.update(raw.tell() - progress.n)
          yield page
    except ET.ParseError as error:
      line, column = error.position
      raise DataError(f"{path}, line {line}: malformed XML (column {column}): "
                      f"{str(error).split(':')[0]}") from None
    except (EOFError, OSError) as error:  # A truncated or corrupt bz2 / gzip stream.
      raise DataError(f"{path}: cannot decompress: {error}") from None


def _page(element: ET.Element, path: paths.AnyPath) -> Page:
  revisions = [c for c in element if _local(c.tag) == "revision"]
  text = _child_text(revisions[-1], "text") if revisions else ""
  title = _child_text(element, "title")
  namespace = _child_text(element, "ns").strip() or "0"
  if not namespace.lstrip("-").isdigit():
    raise DataError(f"{path}: page {title!r}: <ns> is {namespace!r}, not an integer")
  redirect = (any(_local(c.tag) == "redirect" for c in element)
              or text.lstrip()[:9].upper() == "#REDIRECT")
  return Page(title, int(namespace), redirect, text)


def link_target(title: str, namespaces: frozenset[str] | set[str] = frozenset()) -> str | None:
  """The article a wikilink title names, normalised (module docstring); None when it names no
  article (another namespace, an interwiki link, a section of the same page)."""
  title = " ".join(html.unescape(title).replace("_", " ").split()).lstrip(":").strip()
  title = title.split("#", 1)[0].strip()
  if not title:
    return None
  prefix, colon, _ = title.partition(":")
  if colon and (prefix.strip().lower() in REMOVED_NAMESPACES | OTHER_NAMESPACES | namespaces
                or _LANGUAGE_PREFIX.match(prefix)):
    return None
  return title[0].upper() + title[1:]


def _is_removed_link(link: mw_nodes.Wikilink, namespaces) -> bool:
  """File, image, media and category links, and interlanguage links (no anchor text)."""
  prefix, colon, _ = str(link.title).strip().replace("_", " ").partition(":")
  prefix = prefix.strip()
  # Interlanguage prefixes are written in lower case (`[[de:Alpha]]`): `[[Ice: A Film]]` is an
  # article.
  return bool(colon) and (prefix.lower() in REMOVED_NAMESPACES
                          or (link.text is None and (_LANGUAGE_PREFIX.match(prefix) is not None
                                                     or prefix.lower() in namespaces)))


def _kept(node, namespaces) -> bool:
  if isinstance(node, (mw_nodes.Template, mw_nodes.Comment, mw_nodes.Argument)):
    return False
  if isinstance(node, mw_nodes.Tag):
    return str(node.tag).strip().lower() not in _REMOVED_TAGS
  if isinstance(node, mw_nodes.Wikilink):
    return not _is_removed_link(node, namespaces)
  return True


def _clean(code: mw_wikicode.Wikicode, namespaces) -> None:
  """Removes what the module docstring lists from `code`, at every depth, in place."""
  code.nodes = [n for n in code.nodes if _kept(n, namespaces)]
  for node in code.nodes:
    if isinstance(node, mw_nodes.Tag) and node.contents is not None:
      _clean(node.contents, namespaces)
    elif isinstance(node, mw_nodes.Wikilink) and node.text is not None:
      _clean(node.text, namespaces)
    elif isinstance(node, mw_nodes.ExternalLink) and node.title is not None:
      _clean(node.title, namespaces)


def _chunks(nodes) -> Iterator[list | str]:
  """The top-level nodes cut into paragraphs (lists of nodes) and headings (their title):
  blank lines and headings end a paragraph, list lines are skipped."""
  current: list = []
  in_list_line = False
  for node in nodes:
    if isinstance(node, mw_nodes.Heading):
      yield current
      yield node.title.strip_code().strip() if node.level <= 2 else ""
      current, in_list_line = [], False
    elif isinstance(node, mw_nodes.Tag) and node.wiki_markup in _LIST_MARKUP:
      in_list_line = True
    elif isinstance(node, mw_nodes.Text):
      text = _MAGIC_WORD.sub("", node.value)
      if in_list_line:  # The list line goes on up to its newline.
        if "\n" not in text:
          continue
        text, in_list_line = text[text.index("\n"):], False
      pieces = _BLANK_LINE.split(text)
      for piece in pieces[:-1]:
        current.append(mw_nodes.Text(piece))
        yield current
        current = []
      current.append(mw_nodes.Text(pieces[-1]))
    elif not in_list_line:
      current.append(node)
  yield current


def parse_wikitext(title: str, text: str, splitter: str = "blingfire",
                   namespaces: frozenset[str] | set[str] = frozenset()
                   ) -> articles_lib.Article:
  """One page's wikitext as an `Article` (module docstring); `namespaces` are the dump's
  lower-cased namespace names, whose links are no article links."""
  return _article(title, mwparserfromhell.parse(text), splitter, namespaces)


def is_disambiguation(code: mw_wikicode.Wikicode) -> bool:
  """Whether a page carries a disambiguation template (`{{disambiguation}}`, `{{hndis}}`...)."""
  return any(_DISAMBIGUATION.search(str(t.name).strip().lower())
             for t in code.filter_templates(recursive=False))


def _article(title: str, code: mw_wikicode.Wikicode, splitter: str,
             namespaces) -> articles_lib.Article:
  _clean(code, namespaces)
  sections: list[tuple[str, list[articles_lib.Paragraph]]] = [("", [])]
  for chunk in _chunks(code.nodes):
    if isinstance(chunk, str):
      if chunk:  # A level-2 heading; deeper ones ("") only ended the paragraph.
        sections.append((chunk, []))
      continue
    paragraph = mw_wikicode.Wikicode(chunk)
    sentences = sentences_lib.split_sentences(
        paragraph.strip_code(normalize=True, collapse=True), splitter)
    if not sentences:
      continue
    targets = (link_target(str(link.title), namespaces)
               for link in paragraph.filter_wikilinks(recursive=True))
    links = tuple(dict.fromkeys(t for t in targets if t))
    sections[-1][1].append(articles_lib.Paragraph(tuple(sentences), links))
  kept = [sections[0]] + [s for s in sections[1:] if s[1]]
  links = dict.fromkeys(t for _, paragraphs in kept for p in paragraphs for t in p.links)
  return articles_lib.Article(
      title, tuple(articles_lib.Section(t, tuple(ps)) for t, ps in kept), tuple(links))


def iter_articles(dump: str | os.PathLike, splitter: str = "blingfire",
                  progress: tqdm.tqdm | None = None,
                  stats: collections.Counter | None = None) -> Iterator[articles_lib.Article]:
  """The articles of a dump (module docstring), in dump order.

  `stats`, when given, counts the `pages` read and why pages were skipped (`other_namespace`,
  `redirect`, `disambiguation`, `no_paragraph`, `unparsable`: mwparserfromhell gave up).
  """
  sentences_lib.check_splitter(splitter)
  stats = collections.Counter() if stats is None else stats
  namespaces: set[str] = set()
  for page in iter_pages(dump, namespaces, progress):
    stats["pages"] += 1
    if page.namespace != 0 or page.redirect:
      stats["other_namespace" if page.namespace else "redirect"] += 1
      continue
    try:
      code = mwparserfromhell.parse(page.text)
    except (mwparserfromhell.parser.ParserError, RecursionError):
      stats["unparsable"] += 1  # One odd page must not end a many-hour conversion.
      continue
    if is_disambiguation(code):
      stats["disambiguation"] += 1
      continue
    article = _article(page.title, code, splitter, namespaces)
    if not article.paragraphs:
      stats["no_paragraph"] += 1
      continue
    yield article


def convert(dump: str | os.PathLike, out: str | os.PathLike, limit: int | None = None,
            splitter: str = "blingfire", progress: bool = True,
            stats: collections.Counter | None = None) -> int:
  """Writes the articles of `dump` (at most `limit`) to `out` as JSONL; returns how many.

  `stats` is as in `iter_articles`.

  The file is written under a temporary name and renamed when complete, so a dump that turns
  out malformed half-way leaves no truncated `out` behind.
  """
  path = paths.user_path(dump)
  if not path.exists():  # Before anything is created.
    raise FileNotFoundError(f"dump file {path} does not exist")
  out = epath.Path(out)
  partial = out.parent / f".partial-{out.name}"  # Same suffix: gzip or not alike.
  try:
    with tqdm.tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name,
                   disable=not progress, delay=1.0) as bar:
      articles = iter_articles(path, splitter, bar, stats)
      if limit:
        articles = (article for _, article in zip(range(limit), articles))
      count = articles_lib.write_jsonl(partial, articles)
  except BaseException:
    if partial.exists():
      partial.unlink()
    raise
  partial.replace(out)
  return count


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so importing this library module
  never claims flag names (`--out`) that other programs define."""
  flags.DEFINE_string("dump", None, "The MediaWiki XML dump (.xml, .xml.bz2 or .xml.gz).")
  flags.DEFINE_string("out", None, "The article JSONL to write (gzip when it ends in .gz).")
  flags.DEFINE_integer("limit", None, "Stop after this many articles.", lower_bound=1)
  flags.DEFINE_enum("splitter", "blingfire", sentences_lib.SPLITTERS, "Sentence splitter.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.dump or not FLAGS.out:
    raise app.UsageError("--dump and --out are required")
  stats = collections.Counter()
  try:
    count = convert(FLAGS.dump, FLAGS.out, FLAGS.limit, FLAGS.splitter, stats=stats)
  except (FileNotFoundError, DataError) as error:
    # Bad input: one line and status 1, no traceback.
    sys.exit(f"error: {error}")
  skipped = ", ".join(f"{value} {key}" for key, value in sorted(stats.items()) if key != "pages")
  print(f"{count} articles written to {FLAGS.out} from {stats['pages']} pages "
        f"(skipped: {skipped or 'none'})")


if __name__ == "__main__":
  define_flags()
  app.run(main)
