"""Tests for the BEIR readers, the dev split, `load_beir` and the TFDS builder behind it."""

import dataclasses
import gzip
import json
import pathlib
import random
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from retrieval_jax.data import beir
from retrieval_jax.data import beir_readers
from retrieval_jax.data import beir_tfds
from retrieval_jax.data import paths

CORPUS = [
    {"_id": "d1", "title": "Alpha", "text": "first doc", "metadata": {"x": 1}},
    {"_id": "d2", "text": "no title here"},
    {"_id": "d3", "title": None, "text": "null title"},
    {"_id": "d4", "title": "", "text": "empty title"},
    {"_id": "d5", "title": "Ünïcode ✓", "text": "ça marche"},
    {"_id": "d6", "title": "Only title", "text": ""},
]
TRAIN_QIDS = [f"t{i}" for i in range(100)]
QUERIES = [{"_id": "q3", "text": "unjudged"}, {"_id": "q2", "text": "second?"},
           {"_id": "q1", "text": "first?"}]
QUERIES += [{"_id": qid, "text": f"train query {qid}"} for qid in TRAIN_QIDS]
# q1 comes first in the qrels but after q2 in queries.jsonl: BeirData follows queries.jsonl.
TEST_ROWS = [("q1", "d1", 1), ("q2", "d5", 2), ("q1", "d3", 0)]
TRAIN_ROWS = [(qid, f"d{i % 6 + 1}", 1) for i, qid in enumerate(TRAIN_QIDS)] + [("t0", "d2", 1)]


def _jsonl(records) -> str:
  lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
  return "".join(line + "\n" for line in lines)


def _tsv(rows, header="query-id\tcorpus-id\tscore", newline="\n") -> str:
  lines = [header] if header is not None else []
  lines += [r if isinstance(r, str) else "\t".join(map(str, r)) for r in rows]
  return "".join(line + newline for line in lines)


def write_beir(root: pathlib.Path, *, corpus=None, queries=None, qrels=None, gz=False):
  """Writes a BEIR directory; file contents given as strings are written verbatim."""
  corpus = _jsonl(CORPUS) if corpus is None else corpus
  queries = _jsonl(QUERIES) if queries is None else queries
  if qrels is None:  # test.tsv as BEIR ships it (CRLF), plus a byte-order mark as editors add.
    qrels = {"test": "\ufeff" + _tsv(TEST_ROWS, newline="\r\n"), "train": _tsv(TRAIN_ROWS)}
  (root / "qrels").mkdir(parents=True)
  if gz:
    with gzip.open(root / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
      f.write(corpus)
  else:
    (root / "corpus.jsonl").write_text(corpus, encoding="utf-8")
  (root / "queries.jsonl").write_text(queries, encoding="utf-8")
  for name, text in qrels.items():
    (root / "qrels" / f"{name}.tsv").write_text(text, encoding="utf-8", newline="")
  return root


def _load_both(root, split, tmp_path, **kwargs):
  """Loads through TFDS and directly; the two must agree exactly."""
  direct = beir.load_beir(root, split, use_tfds=False, **kwargs)
  via_tfds = beir.load_beir(root, split, data_dir=str(tmp_path / "tfds"), **kwargs)
  assert via_tfds == direct
  return direct


def test_small_fixture_loads_exactly(tmp_path):
  data = _load_both(write_beir(tmp_path / "tiny"), "test", tmp_path)
  assert data.name == "tiny"
  assert data.corpus_ids == ["d1", "d2", "d3", "d4", "d5", "d6"]
  assert data.corpus_titles == ["Alpha", "", "", "", "Ünïcode ✓", "Only title"]
  assert data.corpus_texts[4] == "ça marche"
  assert data.query_ids == ["q2", "q1"]
  assert data.query_texts == ["second?", "first?"]
  assert data.qrels == {"q2": {"d5": 2}, "q1": {"d1": 1, "d3": 0}}
  assert data.doc_strings() == ["Alpha first doc", "no title here", "null title", "empty title",
                                "Ünïcode ✓ ça marche", "Only title"]


@pytest.mark.parametrize("split", ["train", "dev", "train_minus_dev"])
def test_gz_corpus_and_derived_splits_agree_across_paths(tmp_path, split):
  data = _load_both(write_beir(tmp_path / "gzipped", gz=True), split, tmp_path)
  assert data.corpus_ids == [d["_id"] for d in CORPUS]
  assert set(data.query_ids) == set(data.qrels) and data.query_ids


@dataclasses.dataclass
class Bad:
  """A broken file: its path in the directory, its content, and what the error must say."""
  file: str
  content: str
  line: int  # the line the message must name
  phrase: str
  also: str = ""  # a second line the message must name (duplicates)


CORPUS_FILE, QUERIES_FILE, QRELS_FILE = "corpus.jsonl", "queries.jsonl", "qrels/test.tsv"
_QUERY_LINES = _jsonl(QUERIES).splitlines()
BAD = {
    "corpus_invalid_json": Bad(
        CORPUS_FILE, _jsonl([CORPUS[0], '{"_id": "d2", "text": ']), 2, "invalid JSON"),
    "corpus_not_an_object": Bad(CORPUS_FILE, _jsonl([CORPUS[0], "[1, 2]"]), 2, "JSON object"),
    "corpus_missing_id": Bad(
        CORPUS_FILE, _jsonl([CORPUS[0], {"text": "x"}]), 2, "missing field '_id'"),
    "corpus_missing_text": Bad(
        CORPUS_FILE, _jsonl([*CORPUS[:2], {"_id": "d9", "title": "t"}]), 3, "missing field 'text'"),
    "corpus_text_not_string": Bad(
        CORPUS_FILE, _jsonl([{"_id": "d1", "text": 5}]), 1, "'text' must be a string"),
    "corpus_title_not_string": Bad(
        CORPUS_FILE, _jsonl([{"_id": "d1", "title": ["a"], "text": "x"}]), 1,
        "'title' must be a string"),
    "corpus_id_not_string": Bad(
        CORPUS_FILE, _jsonl([CORPUS[0], {"_id": 7, "text": "x"}]), 2, "'_id' must be a string"),
    "corpus_empty_id": Bad(CORPUS_FILE, _jsonl([{"_id": "", "text": "x"}]), 1, "empty '_id'"),
    "corpus_duplicate_id": Bad(
        CORPUS_FILE, _jsonl([*CORPUS[:3], CORPUS[1]]), 4, "duplicate _id 'd2'", "line 2"),
    "corpus_empty_file": Bad(CORPUS_FILE, "", 1, "empty"),
    "queries_invalid_json": Bad(
        QUERIES_FILE, _jsonl([*_QUERY_LINES[:5], "{oops}"]), 6, "invalid JSON"),
    "queries_missing_id": Bad(QUERIES_FILE, _jsonl([{"text": "x"}]), 1, "missing field '_id'"),
    "queries_missing_text": Bad(
        QUERIES_FILE, _jsonl([QUERIES[0], {"_id": "q2"}]), 2, "missing field 'text'"),
    "queries_text_null": Bad(
        QUERIES_FILE, _jsonl([{"_id": "q1", "text": None}]), 1, "'text' must be a string"),
    "queries_duplicate_id": Bad(
        QUERIES_FILE, _jsonl([*_QUERY_LINES[:4], _QUERY_LINES[1]]), 5, "duplicate _id 'q2'",
        "line 2"),
    "queries_only_blank_lines": Bad(QUERIES_FILE, "\n\n", 3, "empty"),
    "qrels_unknown_query": Bad(
        QRELS_FILE, _tsv([*TEST_ROWS, ("q404", "d1", 1)]), 5, "query-id 'q404'"),
    "qrels_unknown_doc": Bad(
        QRELS_FILE, _tsv([("q1", "d404", 1), *TEST_ROWS]), 2, "corpus-id 'd404'"),
    "qrels_two_columns": Bad(
        QRELS_FILE, _tsv(["q1\td1", *TEST_ROWS]), 2, "3 tab-separated columns"),
    "qrels_four_columns": Bad(
        QRELS_FILE, _tsv([*TEST_ROWS, "q1\td2\t1\tx"]), 5, "3 tab-separated columns"),
    "qrels_float_score": Bad(QRELS_FILE, _tsv([*TEST_ROWS, ("q1", "d2", "1.5")]), 5, "integer"),
    "qrels_text_score": Bad(QRELS_FILE, _tsv([("q1", "d2", "high")]), 2, "integer"),
    "qrels_empty_id": Bad(QRELS_FILE, _tsv(["q1\t\t1"]), 2, "empty query-id or corpus-id"),
    "qrels_duplicate_pair": Bad(
        QRELS_FILE, _tsv([*TEST_ROWS, ("q1", "d1", 2)]), 5, "duplicate pair", "line 2"),
    "qrels_missing_header": Bad(QRELS_FILE, _tsv(TEST_ROWS, header=None), 1, "header"),
    "qrels_empty_file": Bad(QRELS_FILE, "", 1, "empty"),
    "qrels_header_only": Bad(QRELS_FILE, _tsv([]), 2, "no qrels rows"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_names_file_and_line_in_both_paths(tmp_path, case):
  bad = BAD[case]
  if bad.file == QRELS_FILE:
    overrides = {"qrels": {"test": bad.content, "train": _tsv(TRAIN_ROWS)}}
  else:
    overrides = {bad.file.split(".")[0]: bad.content}
  root = write_beir(tmp_path / "ds", **overrides)
  messages = []
  for use_tfds in (False, True):
    with pytest.raises(beir.DataError) as error:
      beir.load_beir(root, "test", use_tfds=use_tfds, data_dir=str(tmp_path / "tfds"))
    messages.append(str(error.value))
  assert messages[0] == messages[1]  # TFDS generation raises exactly what the direct reader raises.
  message = messages[0]
  assert str(root / bad.file) in message
  assert re.search(rf"\bline {bad.line}\b", message), message
  assert bad.phrase in message
  assert bad.also in message


def test_bad_gz_corpus_names_the_gz_file(tmp_path):
  root = write_beir(tmp_path / "ds", corpus=_jsonl([CORPUS[0], CORPUS[1], "not json"]), gz=True)
  expected = re.escape(f"{root / 'corpus.jsonl.gz'}, line 3: invalid JSON")
  with pytest.raises(beir.DataError, match=expected):
    beir.load_beir(root, "test", use_tfds=False)


def test_invalid_utf8_names_the_line(tmp_path):
  root = write_beir(tmp_path / "ds")
  with open(root / "queries.jsonl", "ab") as f:
    f.write(b'{"_id": "q\xff", "text": "x"}\n')
  expected = rf"queries\.jsonl, line {len(QUERIES) + 1}: invalid JSON"
  with pytest.raises(beir.DataError, match=expected):
    beir.load_beir(root, "test", use_tfds=False)


def test_truncated_gz_corpus_is_an_error(tmp_path):
  root = write_beir(tmp_path / "ds", gz=True)
  blob = (root / "corpus.jsonl.gz").read_bytes()
  (root / "corpus.jsonl.gz").write_bytes(blob[: len(blob) // 2])
  with pytest.raises(beir.DataError, match=r"corpus\.jsonl\.gz, line \d+: cannot read"):
    beir.load_beir(root, "test", use_tfds=False)


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels"])
def test_missing_files_name_the_path(tmp_path, missing):
  root = write_beir(tmp_path / "ds")
  target = root / missing
  if target.is_dir():
    for tsv in target.iterdir():
      tsv.unlink()
    target.rmdir()
  else:
    target.unlink()
  for use_tfds in (False, True):
    with pytest.raises(beir.DataError, match=re.escape(str(target))):
      beir.load_beir(root, "test", use_tfds=use_tfds, data_dir=str(tmp_path / "tfds"))


def test_two_corpus_files_are_ambiguous(tmp_path):
  root = write_beir(tmp_path / "ds")
  with gzip.open(root / "corpus.jsonl.gz", "wt") as f:
    f.write(_jsonl(CORPUS))
  with pytest.raises(beir.DataError, match="both exist"):
    beir.load_beir(root, "test", use_tfds=False)


def test_unknown_source_and_unknown_split(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
  monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")
  monkeypatch.chdir(tmp_path)
  with pytest.raises(beir.DataError, match="'no-such-set' not found"):
    beir.load_beir("no-such-set")
  with pytest.raises(beir.DataError, match="no local copy"):
    beir.load_beir("scifact", use_tfds=False)
  root = write_beir(tmp_path / "ds")
  available = "available: test, train, dev, train_minus_dev"
  with pytest.raises(beir.DataError, match=f"unknown split 'validation'.*{available}"):
    beir.load_beir(root, "validation", use_tfds=False)
  with pytest.raises(ValueError, match="dev_fraction"):
    beir.load_beir(root, "dev", dev_fraction=1.5, use_tfds=False)


# --- the dev split --------------------------------------------------------------------------------


def test_dev_hash_is_pinned_and_fraction_respected():
  # Pinned: a change of salt or formula would silently move queries between dev and train.
  assert sorted(beir.carve_dev([f"q{i}" for i in range(40)]), key=lambda q: int(q[1:])) == [
      "q0", "q3", "q15", "q16", "q19", "q20", "q22", "q26"]
  ids = [f"query-{i}" for i in range(5000)]
  for fraction in (0.1, 0.2, 0.5):
    assert abs(len(beir.carve_dev(ids, fraction)) / len(ids) - fraction) < 0.025
  assert beir.carve_dev(ids, 0.1) <= beir.carve_dev(ids, 0.2)  # A larger dev only adds queries.


def test_dev_split_disjoint_union_and_order_independent(tmp_path):
  root = write_beir(tmp_path / "a")
  train, dev, rest = (beir.load_beir(root, split, use_tfds=False)
                      for split in ("train", "dev", "train_minus_dev"))
  assert not set(dev.qrels) & set(rest.qrels)
  assert {**dev.qrels, **rest.qrels} == train.qrels
  assert 0.05 < len(dev.qrels) / len(train.qrels) < 0.4
  shuffled = TRAIN_ROWS[:]
  random.Random(0).shuffle(shuffled)
  other = write_beir(tmp_path / "b", qrels={"train": _tsv(shuffled)})
  assert beir.load_beir(other, "dev", use_tfds=False).qrels == dev.qrels
  assert beir.load_beir(root, "dev", use_tfds=False) == dev  # Deterministic.


def test_dev_tsv_wins_over_carving(tmp_path):
  dev_rows = [("t1", "d2", 1), ("t2", "d3", 1)]
  root = write_beir(tmp_path / "ds", qrels={"train": _tsv(TRAIN_ROWS), "dev": _tsv(dev_rows)})
  assert _load_both(root, "dev", tmp_path).qrels == {"t1": {"d2": 1}, "t2": {"d3": 1}}
  rest = _load_both(root, "train_minus_dev", tmp_path)
  assert set(rest.qrels) == set(TRAIN_QIDS) - {"t1", "t2"}


def test_empty_carved_dev_is_an_error(tmp_path):
  root = write_beir(tmp_path / "ds", qrels={"train": _tsv([("t1", "d1", 1)])})
  with pytest.raises(beir.DataError, match="'dev' derived from .*train.tsv is empty"):
    beir.load_beir(root, "dev", use_tfds=False)


# --- the TFDS builder -----------------------------------------------------------------------------


@pytest.fixture
def generation_spy(monkeypatch):
  """Records which parts the TFDS builder actually generates (as opposed to reusing)."""
  calls = []
  original = beir_tfds.BeirBuilder._split_generators

  def spy(self, dl_manager):
    calls.append(self.builder_config.part)
    return original(self, dl_manager)

  monkeypatch.setattr(beir_tfds.BeirBuilder, "_split_generators", spy)
  return calls


def test_tfds_reuses_prepared_data_and_rebuilds_on_change(tmp_path, generation_spy):
  root, data_dir = write_beir(tmp_path / "ds"), str(tmp_path / "tfds")
  first = beir.load_beir(root, "test", data_dir=data_dir)
  assert generation_spy == ["corpus", "queries", "qrels"]
  assert beir.load_beir(root, "test", data_dir=data_dir) == first
  assert generation_spy == ["corpus", "queries", "qrels"]  # Reused, not rebuilt.
  # Editing one part rebuilds that part only, and never serves the stale text.
  edited = [dict(CORPUS[0], text="changed"), *CORPUS[1:]]
  (root / "corpus.jsonl").write_text(_jsonl(edited), encoding="utf-8")
  assert beir.load_beir(root, "test", data_dir=data_dir).corpus_texts[0] == "changed"
  assert generation_spy[3:] == ["corpus"]
  (root / "qrels" / "test.tsv").write_text(_tsv(TEST_ROWS[:1]))
  assert beir.load_beir(root, "test", data_dir=data_dir).qrels == {"q1": {"d1": 1}}
  assert generation_spy[4:] == ["qrels"]


def test_tfds_configs_of_two_directories_do_not_collide(tmp_path):
  a, b = write_beir(tmp_path / "x" / "ds"), write_beir(tmp_path / "y" / "ds")
  name_a = beir_tfds.local_config(beir.locate_files(a), "corpus").name
  name_b = beir_tfds.local_config(beir.locate_files(b), "corpus").name
  assert name_a != name_b and name_a.startswith("ds-") and name_a.endswith("-corpus")


def test_tfds_parts_have_their_features_and_random_access(tmp_path):
  files = beir.locate_files(write_beir(tmp_path / "ds"))
  builders = beir_tfds.prepare_local(files, tmp_path / "tfds")
  assert set(builders["corpus"].info.features) == {"id", "title", "text"}
  assert set(builders["queries"].info.features) == {"id", "text"}
  assert set(builders["qrels"].info.features) == {"query_id", "corpus_id", "score", "line"}
  assert set(builders["qrels"].info.splits) == {"test", "train"}
  corpus = builders["corpus"].as_data_source()["corpus"]
  assert len(corpus) == len(CORPUS)
  assert corpus[4]["id"] == b"d5"  # File order kept.
  assert corpus[4]["title"].decode() == "Ünïcode ✓"
  assert builders["qrels"].as_data_source()["test"][0]["line"] == 2


class FakeDownloadManager:
  """Stands in for `tfds.download.DownloadManager`: serves an already 'extracted' folder."""
  downloaded_size = 0

  def __init__(self, extracted: pathlib.Path):
    self.extracted, self.urls = extracted, []

  def download_and_extract(self, url):
    self.urls.append(url)
    return self.extracted


def test_download_url_and_root():
  assert beir_tfds.beir_url("scifact") == (
      "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip")
  fake = FakeDownloadManager(pathlib.Path("/extracted/zip"))
  assert beir_tfds.download_root(fake, "nfcorpus") == pathlib.Path("/extracted/zip/nfcorpus")
  assert fake.urls == [
      "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/nfcorpus.zip"]
  # Downloads are checked against TFDS's recorded size and SHA-256 of the zip.
  assert beir_tfds.beir_url("scifact") in (beir_tfds.BeirBuilder.url_infos or {})


def test_name_without_local_copy_is_downloaded(tmp_path, monkeypatch, generation_spy):
  def no_network(*args, **kwargs):
    raise AssertionError("the test tried to open a network connection")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setenv(paths.DATA_ENV, str(tmp_path / "empty"))
  monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")
  monkeypatch.chdir(tmp_path)
  write_beir(tmp_path / "extracted" / "scifact")
  fake = FakeDownloadManager(tmp_path / "extracted")
  monkeypatch.setattr(beir_tfds.BeirBuilder, "_make_download_manager", lambda self, **kwargs: fake)
  data_dir = str(tmp_path / "tfds")
  data = beir.load_beir("scifact", "test", data_dir=data_dir)
  # Asked once per part; a real DownloadManager serves the 2nd and 3rd from its cache.
  assert fake.urls == [beir_tfds.beir_url("scifact")] * 3
  assert data.name == "scifact" and data.qrels == {"q2": {"d5": 2}, "q1": {"d1": 1, "d3": 0}}
  assert beir.load_beir("scifact", "train", data_dir=data_dir).qrels == beir.load_beir(
      tmp_path / "extracted" / "scifact", "train", use_tfds=False).qrels
  assert len(fake.urls) == 3  # The second load reused the prepared data.
  assert generation_spy == ["corpus", "queries", "qrels"]


# --- module structure -----------------------------------------------------------------------------


def test_readers_are_one_module_that_neither_loader_imports_in_a_circle():
  # The public names stay importable from `beir`, and are the readers' own objects, so
  # `except beir.DataError` catches what the TFDS builder raises.
  for name in ("DataError", "BeirFiles", "QrelRow", "RawBeir", "QRELS_HEADER", "locate_files",
               "iter_jsonl", "iter_corpus", "iter_queries", "iter_qrels", "read_raw"):
    assert getattr(beir, name) is getattr(beir_readers, name), name
  # A fresh interpreter: `beir` does not pull in TFDS (0.35 s of imports) and `beir_tfds` does not
  # import `beir`, so neither imports the other at top level.
  script = ("import sys\n"
            "import retrieval_jax.data.beir\n"
            "assert 'tensorflow_datasets' not in sys.modules\n"
            "assert 'retrieval_jax.data.beir_tfds' not in sys.modules\n"
            "del sys.modules['retrieval_jax.data.beir']\n"
            "import retrieval_jax.data.beir_tfds\n"
            "assert 'retrieval_jax.data.beir' not in sys.modules\n")
  subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


# --- positives --------------------------------------------------------------------------------------


def test_positive_rows_by_doc_id_sorted_unique_int64():
  # d1 on rows 0 and 3 (an in-memory corpus may repeat an id); d9 is not in the corpus.
  data = beir.BeirData(
      "dup", ["d1", "d2", "d3", "d1", "d4"], [""] * 5, list("abcde"),
      ["q1", "q2", "q3", "q4"], ["w", "x", "y", "z"],
      {"q1": {"d4": 2, "d1": 1, "d2": 0}, "q2": {"d3": 0, "d9": 1}, "q3": {"d3": 1, "d2": 3}})
  rows = data.positive_rows()
  assert [r.tolist() for r in rows] == [[0, 3, 4], [], [1, 2], []]  # judged 0 / unknown / unjudged
  assert all(r.dtype == np.int64 and r.ndim == 1 for r in rows)


def test_positive_rows_of_a_loaded_split(tmp_path):
  data = beir.load_beir(write_beir(tmp_path / "b"), "test", use_tfds=False)
  # queries.jsonl order: q2 then q1; q1 judges d3 with 0.
  assert data.query_ids == ["q2", "q1"]
  assert [r.tolist() for r in data.positive_rows()] == [[4], [0]]


# --- real data ------------------------------------------------------------------------------------


def test_scifact(scifact_dir, tmp_path):
  train = _load_both(scifact_dir, "train", tmp_path)
  assert len(train.corpus_ids) == 5183 and len(set(train.corpus_ids)) == 5183
  assert train.corpus_ids[:2] == ["4983", "5836"]  # File order.
  assert len(train.query_ids) == 809 and train.query_ids[0] == "0"
  assert sum(len(docs) for docs in train.qrels.values()) == 919
  assert len(train.doc_strings()) == 5183 and all(train.doc_strings())
  dev = _load_both(scifact_dir, "dev", tmp_path)
  rest = _load_both(scifact_dir, "train_minus_dev", tmp_path)
  assert 0.15 < len(dev.query_ids) / 809 < 0.25
  assert not set(dev.qrels) & set(rest.qrels)
  assert {**dev.qrels, **rest.qrels} == train.qrels
  assert len(dev.query_ids) + len(rest.query_ids) == 809
  with pytest.raises(beir.DataError, match="available: train, dev, train_minus_dev"):
    beir.load_beir(scifact_dir, "test", use_tfds=False)
