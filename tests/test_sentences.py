"""data/sentences.py: library sentence splitters with normalised whitespace."""

import pytest

from retrieval_jax.data import sentences

_PARAGRAPH = """   Áedán mac Gabráin was king of Dál Riata, a kingdom in modern Argyll,
   Scotland and County Antrim, Ireland, from about 574 onwards. He was a
   contemporary of Columba.  The Irish annals record Áedán's campaigns
   against his neighbours (died c. 555–560)."""

_EXPECTED = [
    "Áedán mac Gabráin was king of Dál Riata, a kingdom in modern Argyll, Scotland and County "
    "Antrim, Ireland, from about 574 onwards.",
    "He was a contemporary of Columba.",
    "The Irish annals record Áedán's campaigns against his neighbours (died c. 555–560).",
]


@pytest.mark.parametrize("splitter", sentences.SPLITTERS)
def test_wrapped_paragraph_splits_into_sentences(splitter):
  assert sentences.split_sentences(_PARAGRAPH, splitter=splitter) == _EXPECTED


def test_blingfire_is_the_default():
  assert sentences.split_sentences(_PARAGRAPH) == _EXPECTED


@pytest.mark.parametrize("splitter", sentences.SPLITTERS)
@pytest.mark.parametrize("text", ["", "   ", "\n\n \t"])
def test_blank_text_has_no_sentences(splitter, text):
  assert sentences.split_sentences(text, splitter=splitter) == []


@pytest.mark.parametrize("splitter", sentences.SPLITTERS)
def test_whitespace_is_normalised_inside_sentences(splitter):
  got = sentences.split_sentences("One  two\tthree\nfour.\n\nFive six.", splitter=splitter)
  assert got == ["One two three four.", "Five six."]


def test_unknown_splitter_names_the_value_and_the_choices():
  with pytest.raises(ValueError, match=r"'nltk'.*\('blingfire', 'pysbd'\)"):
    sentences.split_sentences("A sentence.", splitter="nltk")
