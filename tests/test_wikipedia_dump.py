"""data/wikipedia_dump.py: a MediaWiki XML dump to article JSONL, on a dump excerpt written here."""

import bz2
import collections
import os
import pathlib
import subprocess
import sys

import pytest

from retrieval_jax.data import articles, beir_readers, wikipedia_dump

_REPO = pathlib.Path(__file__).resolve().parents[1]

_ALPHA = """{{Infobox letter
| name = Alpha
| image = [[File:Alpha.svg|100px]]
| language = [[Greek language|Greek]]
}}
'''Alpha''' (''ἄλφα'') is the first [[letter]] of the [[Greek alphabet#History|Greek \
alphabet]].<ref>{{cite book |title=Letters |url=http://example.org}}</ref> It derives from the \
[[Phoenician_alphabet|Phoenician]] letter [[aleph]].<ref name="a"/>&nbsp;In the system of \
[[Greek numerals]], it has a value of 1.

[[File:Alpha uc lc.svg|thumb|Upper and lower case, with [[Beta]] beside it]]
Alpha is a symbol in [[physics]] and [[mathematics]], see [[#Uses|below]].

== History ==
<!-- [[Hidden]] -->
The letter was borrowed from the [[Phoenicia]]ns.{{citation needed|date=May 2020}}

{| class="wikitable"
|-
! Letter !! Value
|-
| [[Beta]] || 2
|}

=== Shape ===
Its shape comes from an [[ox]] head.

== Uses ==
* In [[physics]], [[alpha particle]]s.
* In finance.
The [[Alpha_(finance)|alpha of a fund]] measures returns, as in [[wikt:alpha|wiktionary]].

== See also ==
* [[Beta]]
{{Greek alphabet}}

[[Category:Greek letters]]
[[de:Alpha]]
__NOTOC__
"""

_PAGES = [
    ("Alpha", 0, None, _ALPHA),
    ("Beta", 0, "Beta (letter)", "#REDIRECT [[Beta (letter)]]\n\n{{R from move}}"),
    ("Talk:Alpha", 1, None, "Is [[Alpha]] the first letter? Yes, it is the first letter."),
    ("Template:Greek alphabet", 10, None, "[[Alpha]] and [[Beta]] are letters of the Greek."),
    ("Delta (disambiguation)", 0, None, "'''Delta''' may refer to:\n* [[Delta (letter)]]\n\n"
     "{{Disambiguation}}"),
    ("Gamma", 0, None, "'''Gamma''' is the third letter.\n\nIt follows [[beta (letter)|beta]] "
     "in [[Ice: A Film]].[[fr:Gamma]]"),
]

_EXPECTED_ALPHA = {
    "title": "Alpha",
    "links": ["Letter", "Greek alphabet", "Phoenician alphabet", "Aleph", "Greek numerals",
              "Physics", "Mathematics", "Phoenicia", "Ox", "Alpha (finance)"],
    "sections": [
        {"title": "", "paragraphs": [
            {"sentences": ["Alpha (ἄλφα) is the first letter of the Greek alphabet.",
                           "It derives from the Phoenician letter aleph.",
                           "In the system of Greek numerals, it has a value of 1."],
             "links": ["Letter", "Greek alphabet", "Phoenician alphabet", "Aleph",
                       "Greek numerals"]},
            {"sentences": ["Alpha is a symbol in physics and mathematics, see below."],
             "links": ["Physics", "Mathematics"]}]},
        {"title": "History", "paragraphs": [
            {"sentences": ["The letter was borrowed from the Phoenicians."],
             "links": ["Phoenicia"]},
            {"sentences": ["Its shape comes from an ox head."], "links": ["Ox"]}]},
        {"title": "Uses", "paragraphs": [
            {"sentences": ["The alpha of a fund measures returns, as in wiktionary."],
             "links": ["Alpha (finance)"]}]},
    ],
}


def _escape(text: str) -> str:
  return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _page(title, namespace, redirect, text):
  redirect = f'    <redirect title="{_escape(redirect)}" />\n' if redirect else ""
  return f"""  <page>
    <title>{_escape(title)}</title>
    <ns>{namespace}</ns>
    <id>{abs(hash(title)) % 10000}</id>
{redirect}    <revision>
      <id>1</id>
      <timestamp>2020-01-01T00:00:00Z</timestamp>
      <contributor><username>Tester</username><id>1</id></contributor>
      <model>wikitext</model>
      <format>text/x-wiki</format>
      <text bytes="{len(text.encode())}" xml:space="preserve">{_escape(text)}</text>
      <sha1>0</sha1>
    </revision>
  </page>
"""


def dump_xml(pages=_PAGES) -> str:
  """A dump in the MediaWiki export schema 0.10, with its siteinfo."""
  return ("""<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xsi:schemaLocation="http://www.mediawiki.org/xml/export-0.10/ \
http://www.mediawiki.org/xml/export-0.10.xsd" version="0.10" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <generator>MediaWiki 1.41.0</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="-2" case="first-letter">Media</namespace>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="10" case="first-letter">Template</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
      <namespace key="100" case="first-letter">Portal</namespace>
    </namespaces>
  </siteinfo>
""" + "".join(_page(*p) for p in pages) + "</mediawiki>\n")


@pytest.fixture(params=["plain", "bz2"])
def dump(tmp_path, request):
  if request.param == "plain":
    path = tmp_path / "enwiki-pages-articles.xml"
    path.write_text(dump_xml(), encoding="utf-8")
  else:
    path = tmp_path / "enwiki-pages-articles.xml.bz2"
    path.write_bytes(bz2.compress(dump_xml().encode("utf-8")))
  return path


def test_dump_to_articles(dump, tmp_path):
  out, stats = tmp_path / "articles.jsonl.gz", collections.Counter()
  assert wikipedia_dump.convert(dump, out, progress=False, stats=stats) == 2
  assert stats == {"pages": 6, "redirect": 1, "other_namespace": 2, "disambiguation": 1}
  alpha, gamma = articles.read_jsonl(out)
  assert alpha.to_json() == _EXPECTED_ALPHA
  # Redirects, other namespaces and disambiguation pages are not articles.
  assert gamma.to_json() == {
      "title": "Gamma", "links": ["Beta (letter)", "Ice: A Film"],
      "sections": [{"title": "", "paragraphs": [
          {"sentences": ["Gamma is the third letter."], "links": []},
          {"sentences": ["It follows beta in Ice: A Film."],
           "links": ["Beta (letter)", "Ice: A Film"]}]}]}
  assert not list(tmp_path.glob(".partial-*"))


def test_limit_and_pages(dump, tmp_path):
  out = tmp_path / "one.jsonl"
  assert wikipedia_dump.convert(dump, out, limit=1, progress=False) == 1
  assert [a.title for a in articles.read_jsonl(out)] == ["Alpha"]
  namespaces = set()
  pages = list(wikipedia_dump.iter_pages(dump, namespaces))
  assert [(p.title, p.namespace, p.redirect) for p in pages] == [
      (t, n, r is not None) for t, n, r, _ in _PAGES]
  assert pages[0].text == _ALPHA
  assert namespaces == {"media", "talk", "template", "category", "portal"}


@pytest.mark.parametrize("title, target", [
    ("letter", "Letter"), ("Greek_alphabet#History", "Greek alphabet"), ("#Uses", None),
    (" phoenician  alphabet ", "Phoenician alphabet"), ("AT&amp;T", "AT&T"),
    ("Category:Greek letters", None), (":Category:Greek letters", None), ("de:Alpha", None),
    ("wikt:alpha", None), ("Portal:Greece", None),
    ("Star Wars: Episode IV", "Star Wars: Episode IV"),
    (":Alpha", "Alpha"), ("Ice: A Film", "Ice: A Film"), ("ice: a film", None),
])
def test_link_target(title, target):
  assert wikipedia_dump.link_target(title, {"portal"}) == target


def test_malformed_xml_names_the_file_and_line(tmp_path):
  path = tmp_path / "broken.xml"
  text = dump_xml().replace("<ns>1</ns>", "<ns>1</nz>")
  path.write_text(text, encoding="utf-8")
  line = text[:text.index("</nz>")].count("\n") + 1
  with pytest.raises(beir_readers.DataError, match=rf"broken.xml, line {line}: malformed XML"):
    wikipedia_dump.convert(path, tmp_path / "out.jsonl", progress=False)
  assert not list(tmp_path.glob("*out.jsonl"))  # No half-written output.
  (tmp_path / "bad.xml.bz2").write_bytes(b"not bz2 at all")
  with pytest.raises(beir_readers.DataError, match="bad.xml.bz2: cannot decompress"):
    wikipedia_dump.convert(tmp_path / "bad.xml.bz2", tmp_path / "out.jsonl", progress=False)


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(_REPO))
  return subprocess.run([sys.executable, "-m", "retrieval_jax.data.wikipedia_dump", *args],
                        capture_output=True, text=True, env=env, cwd=_REPO, timeout=60)


def test_cli(tmp_path):
  path = tmp_path / "dump.xml.bz2"
  path.write_bytes(bz2.compress(dump_xml().encode("utf-8")))
  out = tmp_path / "articles.jsonl.gz"
  done = _cli(f"--dump={path}", f"--out={out}", "--limit=5")
  assert done.returncode == 0, done.stderr
  assert "2 articles written" in done.stdout and "from 6 pages" in done.stdout
  assert articles.read_jsonl(out)[0].to_json() == _EXPECTED_ALPHA

  failed = _cli(f"--dump={tmp_path / 'missing.xml'}", f"--out={out}")
  assert failed.returncode == 1
  assert failed.stderr.strip().splitlines() == [
      f"error: dump file {tmp_path / 'missing.xml'} does not exist"]

  (tmp_path / "broken.xml").write_text(dump_xml()[:-30], encoding="utf-8")
  failed = _cli(f"--dump={tmp_path / 'broken.xml'}", f"--out={out}")
  assert failed.returncode == 1
  assert len(failed.stderr.strip().splitlines()) == 1
  assert failed.stderr.startswith(f"error: {tmp_path / 'broken.xml'}, line ")
  assert "malformed XML" in failed.stderr


def test_an_unparsable_page_is_skipped_and_counted(dump, tmp_path, monkeypatch):
  parse = wikipedia_dump.mwparserfromhell.parse

  def failing(text):
    if "third letter" in text:
      raise wikipedia_dump.mwparserfromhell.parser.ParserError("too deep")
    return parse(text)

  monkeypatch.setattr(wikipedia_dump.mwparserfromhell, "parse", failing)
  stats = collections.Counter()
  assert [a.title for a in wikipedia_dump.iter_articles(dump, stats=stats)] == ["Alpha"]
  assert stats["unparsable"] == 1
