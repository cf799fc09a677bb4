"""data/wikispeedia.py: Wikispeedia as `Article`s, on the real data and on a hand-made copy."""

import collections
import gzip
import json
import urllib.parse

import pytest

from retrieval_jax.data import beir_readers, wikispeedia
from tests import conftest

_HEADER = "# The list of all articles.\n# FORMAT:   article\n#\n\n"

_ALPHA = """   #copyright

Alpha (letter)

2007 Schools Wikipedia Selection. Related subjects: Languages; Writing
systems

   A carved alpha on a stone tablet from Athens.
   Enlarge
   A carved alpha on a stone tablet from Athens.

   Alpha is the first letter of the Greek alphabet. It came from the
   Phoenician letter aleph, and Beta follows it.

   CAPTION: Alpha
   Letter         Alpha
   Numeric value  1

History

   The letter was borrowed by the Greeks. It gave rise to the Latin A
   and to the Cyrillic A.
   Gallery caption of a vase
   Gallery caption of a vase

   Short line.

Gallery

   A vase from Crete with an alpha painted on it in red

Uses

     * In physics, alpha particles.
     * In finance, the alpha of a fund.

   In mathematics, alpha names an angle. See gamma for another letter.
   Retrieved from " http://en.wikipedia.org/wiki/Alpha_(letter)"
   This reference article is mainly selected from the English Wikipedia
   with only minor checks and changes.
"""

_BETA = """   #copyright

Beta, the letter

2007 Schools Wikipedia Selection. Related subjects: Languages

   Beta is the second letter of the Greek alphabet, after alpha.
"""

_GAMMA = """   #copyright

Gamma

2007 Schools Wikipedia Selection. Related subjects: Languages

   Gamma is the third letter. Nothing links to it from a paragraph here.
"""


def _write(directory, texts, links, names=None):
  """A Wikispeedia directory: `texts` maps URL-encoded names to their plain text."""
  names = list(texts) if names is None else names
  (directory / "articles.tsv").write_text(_HEADER + "".join(f"{n}\n" for n in names))
  (directory / "links.tsv").write_text(_HEADER + "".join(f"{s}\t{t}\n" for s, t in links))
  with gzip.open(directory / "plaintext_articles.jsonl.gz", "wt", encoding="utf-8") as f:
    for name, text in texts.items():
      f.write(json.dumps({"article": name, "text": text}) + "\n")
  return directory


@pytest.fixture
def small(tmp_path):
  texts = {"Alpha_%28letter%29": _ALPHA, "Beta%2C_the_letter": _BETA, "Gamma": _GAMMA}
  links = [("Alpha_%28letter%29", "Beta%2C_the_letter"), ("Alpha_%28letter%29", "Gamma"),
           ("Alpha_%28letter%29", "Athens"), ("Beta%2C_the_letter", "Alpha_%28letter%29")]
  return _write(tmp_path, texts, links)


def test_small_directory_is_parsed(small):
  stats = collections.Counter()
  alpha, beta, gamma = wikispeedia.read_articles(small, stats=stats)
  assert [alpha.title, beta.title, gamma.title] == ["Alpha (letter)", "Beta, the letter", "Gamma"]
  assert alpha.links == ("Beta, the letter", "Gamma", "Athens")
  # The lead first; "Gallery" is dropped: its one line is a caption without a sentence end.
  assert [s.title for s in alpha.sections] == ["", "History", "Uses"]
  assert [p.sentences for p in alpha.paragraphs] == [
      ("Alpha is the first letter of the Greek alphabet.",
       "It came from the Phoenician letter aleph, and Beta follows it."),
      ("The letter was borrowed by the Greeks.",
       "It gave rise to the Latin A and to the Cyrillic A."),
      ("In mathematics, alpha names an angle.", "See gamma for another letter."),
  ]
  # String-matched on the target's title or displayed title: "Beta" alone names neither.
  assert [p.links for p in alpha.paragraphs] == [(), (), ("Gamma",)]
  assert beta.paragraphs[0].links == ("Alpha (letter)",)  # "alpha": the bare, lower-cased title.
  assert gamma.links == () and gamma.paragraphs[0].links == ()
  assert stats["articles"] == 3 and stats["links"] == 4 and stats["located_links"] == 2
  assert stats["caption_lines"] == 5  # The Enlarge caption (3 lines) and the repeated one (2).
  assert stats["dropped_short"] == 2  # "Short line." and "Numeric value  1" (2 spaces only).
  assert stats["dropped_no_sentence_end"] == 1  # The gallery caption.


def test_text_never_holds_header_banner_footer_or_layout(small):
  for article in wikispeedia.read_articles(small):
    text = " ".join(s for p in article.paragraphs for s in p.sentences)
    for debris in ("#copyright", "2007 Schools", "Related subjects", "Enlarge", "CAPTION",
                   "Numeric value", "Retrieved from", "reference article", "* In physics"):
      assert debris not in text


def test_pysbd_splitter(small):
  alpha = wikispeedia.read_articles(small, splitter="pysbd")[0]
  assert alpha.paragraphs[0].sentences[0] == "Alpha is the first letter of the Greek alphabet."


def test_errors_name_the_input(small, tmp_path):
  with pytest.raises(ValueError, match="'spacy'"):
    wikispeedia.read_articles(small, splitter="spacy")
  with pytest.raises(FileNotFoundError, match="no Wikispeedia directory '/no/such/dir'"):
    wikispeedia.read_articles("/no/such/dir")
  (small / "links.tsv").write_text(_HEADER + "Gamma\tAlpha_%28letter%29\nGamma only\n")
  with pytest.raises(beir_readers.DataError, match=r"links.tsv, line 6: not 'source<TAB>target'"):
    wikispeedia.read_articles(small)
  (small / "links.tsv").write_text(_HEADER + "Delta\tGamma\n")
  with pytest.raises(beir_readers.DataError, match=r"line 5: source 'Delta' is not in"):
    wikispeedia.read_articles(small)
  (small / "links.tsv").unlink()
  with pytest.raises(FileNotFoundError, match="links.tsv does not exist"):
    wikispeedia.read_articles(small)


def test_texts_must_follow_articles_tsv(tmp_path):
  _write(tmp_path, {"Gamma": _GAMMA, "Beta": _BETA}, [], names=["Beta", "Gamma"])
  with pytest.raises(beir_readers.DataError,
                     match=r"jsonl.gz, line 1: article 'Gamma', but .*articles.tsv, line 5"):
    wikispeedia.read_articles(tmp_path)
  _write(tmp_path, {"Gamma": _GAMMA}, [], names=["Gamma", "Beta"])
  with pytest.raises(beir_readers.DataError, match=r"1 articles, but .* lists 2"):
    wikispeedia.read_articles(tmp_path)
  _write(tmp_path, {"Gamma": _GAMMA, "Beta": _BETA}, [], names=["Gamma"])
  with pytest.raises(beir_readers.DataError, match=r"line 2: article 'Beta' is not in"):
    wikispeedia.read_articles(tmp_path)
  with gzip.open(tmp_path / "plaintext_articles.jsonl.gz", "wt", encoding="utf-8") as f:
    f.write(json.dumps({"article": "Gamma", "text": _GAMMA}) + "\n{not json\n")
  with pytest.raises(beir_readers.DataError, match=r"jsonl.gz, line 2: not an article record"):
    wikispeedia.read_articles(tmp_path)


def test_paragraph_links_are_whole_word_mentions():
  got = wikispeedia.paragraph_links(
      ["Mercury is hot. Artists paint.", "The art of war.", "Nothing here."],
      ["Mercury (planet)", "Art", "War"])
  assert got == [("Mercury (planet)",), ("Art", "War"), ()]


# The real data, read once for the module (about 15 s); conftest's `wikispeedia_dir` is per test.
@pytest.fixture(scope="module")
def real():
  root = conftest.shared_data_dir()
  directory = None if root is None else root / "wikispeedia"
  if directory is None or not (directory / "plaintext_articles.jsonl.gz").exists():
    pytest.skip("Wikispeedia not found: set $RETRIEVAL_JAX_DATA or place "
                "../shared/data/wikispeedia")
  stats = collections.Counter()
  return directory, wikispeedia.read_articles(directory, stats=stats), stats


def test_real_counts_titles_and_links(real):
  directory, articles, stats = real
  names = [line.strip() for line in (directory / "articles.tsv").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
  assert len(articles) == len(names) == 4604
  assert [a.title for a in articles] == [urllib.parse.unquote(n).replace("_", " ") for n in names]
  expected = collections.defaultdict(list)
  for line in (directory / "links.tsv").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
      source, target = line.split("\t")
      expected[urllib.parse.unquote(source).replace("_", " ")].append(
          urllib.parse.unquote(target).replace("_", " "))
  assert sum(len(a.links) for a in articles) == 119882
  assert all(list(a.links) == expected[a.title] for a in articles)
  assert stats["paragraphs"] == sum(len(a.paragraphs) for a in articles) > 140_000


def test_real_structure_and_text(real):
  _, articles, _ = real
  by_title = {a.title: a for a in articles}
  first = by_title["Áedán mac Gabráin"]
  assert first.sections[0].paragraphs[0].sentences[0] == (
      "Áedán mac Gabráin was king of Dál Riata, a kingdom in modern Argyll, Scotland and County "
      "Antrim, Ireland, from about 574 onwards.")
  assert [s.title for s in first.sections][:3] == ["", "Background", "Neighbours"]
  assert by_title["France"].sections[0].paragraphs[0].sentences[0].startswith(
      "France (French: IPA: [fʁɑ̃s]), officially the French Republic")
  for article in articles:
    assert article.sections[0].title == ""
    assert all(s.title for s in article.sections[1:])
    links = set(article.links)
    for paragraph in article.paragraphs:
      assert set(paragraph.links) <= links
      assert paragraph.sentences and all(s and s == " ".join(s.split())
                                          for s in paragraph.sentences)
      text = paragraph.text
      assert "#copyright" not in text and "2007 Schools Wikipedia Selection" not in text
      assert "Enlarge" not in paragraph.sentences and "Retrieved from" not in text
