"""STS-B reading: the official file format, errors, the TFDS builder, the real files' counts."""

import pathlib

import numpy as np
import pytest

from retrieval_jax.data import paths, stsb, stsb_tfds
from tests.conftest import shared_data_dir

# The official layout: genre, filename, year, id, score, sentence1, sentence2, and on some lines
# license columns; sentences with quote characters that a CSV reader would pair up.
TINY_LINES = [
    "main-captions\tMSRvid\t2012test\t0000\t5.000\tA man is \"dancing\".\tA man dances.",
    "main-news\theadlines\t2016\t0281\t3.8\tUS court's ruling\t\"Court rules\" on 'appeal",
    ("main-news\theadlines\t2016\t0294\t0.2\tEuro crisis is over\tA cat sleeps.\t"
     "Europe Media Monitor (http://emm.newsbrief.eu)\tEurope Media Monitor"),
    "main-forum\tdeft-forum\t2014\t0001\t2.5\tA man is \"dancing\".\tSomeone \"quoted\"",
]


def write_split(root: pathlib.Path, split: str, lines=TINY_LINES) -> pathlib.Path:
  """Writes `lines` as root/sts-<split>.csv (trailing line break, as the release)."""
  root.mkdir(parents=True, exist_ok=True)
  path = root / stsb.split_file_name(split)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def test_reads_fields_verbatim_quotes_and_license_columns(tmp_path):
  pairs = stsb.read_pairs(write_split(tmp_path, "dev"))
  assert len(pairs) == 4
  assert pairs.sentence1 == ["A man is \"dancing\".", "US court's ruling", "Euro crisis is over",
                             "A man is \"dancing\"."]
  assert pairs.sentence2 == ["A man dances.", "\"Court rules\" on 'appeal", "A cat sleeps.",
                             "Someone \"quoted\""]
  assert pairs.scores.dtype == np.float64
  np.testing.assert_array_equal(pairs.scores, [5.0, 3.8, 0.2, 2.5])
  assert pairs.genres == ["main-captions", "main-news", "main-news", "main-forum"]
  assert pairs.source == str(tmp_path / "sts-dev.csv")


def test_sentences_are_row_by_row_with_duplicates():
  pairs = stsb.parse_text("\n".join(TINY_LINES) + "\n")
  found = stsb.sentences(pairs)
  assert len(found) == 8 and found[:4] == ["A man is \"dancing\".", "A man dances.",
                                           "US court's ruling", "\"Court rules\" on 'appeal"]
  assert found.count("A man is \"dancing\".") == 2


def test_crlf_and_no_final_line_break():
  pairs = stsb.parse_text("\r\n".join(TINY_LINES))
  assert pairs.sentence2[0] == "A man dances." and pairs.sentence2[-1] == "Someone \"quoted\""


@pytest.mark.parametrize("bad,message", [
    ("main-news\theadlines\t2016\t0001\t2.0\tonly one sentence", r":3: 6 tab-separated fields"),
    ("main-news\theadlines\t2016\t0001\tfive\ta\tb", r":3: score 'five' \(field 5\) is not a"),
    ("main-news\theadlines\t2016\t0001\tnan\ta\tb", r":3: score 'nan'"),
    ("", r":3: 1 tab-separated fields"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
  path = write_split(tmp_path, "train", TINY_LINES[:2] + [bad] + TINY_LINES[2:])
  with pytest.raises(ValueError, match=f"{path}{message}"):
    stsb.read_pairs(path)


def test_bytes_that_are_not_utf8_name_the_file(tmp_path):
  path = tmp_path / "sts-dev.csv"
  path.write_bytes(b"main-news\theadlines\t2016\t0001\t2.0\ta \xff\tb\n")
  with pytest.raises(ValueError, match=f"{path}: not UTF-8 text"):
    stsb.read_pairs(path)


def test_missing_split_names_path_and_present_splits(tmp_path):
  write_split(tmp_path, "train")
  write_split(tmp_path, "dev")
  with pytest.raises(FileNotFoundError) as error:
    stsb.load_pairs(tmp_path, "test")
  assert str(error.value) == (f"{tmp_path / 'sts-test.csv'} does not exist: no 'test' split in "
                              f"{tmp_path} (splits there: train, dev)")
  with pytest.raises(ValueError, match=r"split='validation' is not one of"):
    stsb.load_pairs(tmp_path, "validation")
  with pytest.raises(FileNotFoundError, match="STS-B data .*nope.* is not a directory"):
    stsb.load_pairs(tmp_path / "nope", "dev")


def test_default_source_is_found_like_every_data_set(tmp_path, monkeypatch):
  write_split(tmp_path / "stsb", "dev")
  monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
  assert stsb.find_directory() == tmp_path / "stsb"
  assert len(stsb.load_pairs(split="dev")) == 4


def test_tfds_builder_equals_the_reader(tmp_path):
  source = tmp_path / "stsb"
  write_split(source, "dev")
  write_split(source, "train", TINY_LINES[:3])
  tfds_dir = tmp_path / "tfds"
  builder = stsb_tfds.prepare(source, tfds_dir)
  assert sorted(builder.info.splits) == ["dev", "train"]
  for split in ("dev", "train"):
    direct = stsb.load_pairs(source, split)
    through = stsb.load_pairs(f"tfds:{source}", split, tfds_dir=tfds_dir)
    assert through == direct  # scores exactly: stored as their text
    assert through.source == direct.source
  with pytest.raises(FileNotFoundError, match=r"no 'test' split in .*\(splits there: train, dev\)"):
    stsb.load_pairs(f"tfds:{source}", "test", tfds_dir=tfds_dir)
  # An edited file is another config (prepared again); an unchanged one keeps its name.
  name = stsb_tfds.source_config(source).name
  assert stsb_tfds.source_config(source).name == name
  write_split(source, "dev", TINY_LINES[:2])
  assert stsb_tfds.source_config(source).name != name
  assert len(stsb.load_pairs(f"tfds:{source}", "dev", tfds_dir=tfds_dir)) == 2


def test_tfds_builder_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds none of the STS-B files"):
    stsb_tfds.prepare(tmp_path / "empty", tmp_path / "tfds")
  write_split(tmp_path / "bad", "dev", TINY_LINES[:1] + ["x\ty"])
  with pytest.raises(ValueError, match=r"sts-dev\.csv:2: 2 tab-separated fields"):
    stsb_tfds.prepare(tmp_path / "bad", tmp_path / "tfds")
  with pytest.raises(ValueError, match="must be on a local disk"):
    stsb_tfds.prepare(tmp_path / "bad", "gs://bucket/tfds")


def test_real_files_counts():
  root = shared_data_dir()
  if root is None or not (root / "stsb" / "sts-dev.csv").exists():
    pytest.skip("STS-B not found: set $RETRIEVAL_JAX_DATA or place ../shared/data/stsb")
  dev = stsb.load_pairs(root / "stsb", "dev")
  train = stsb.load_pairs(root / "stsb", "train")
  # The counts and score means of the data's SOURCE.md.
  assert (len(dev), len(train)) == (1500, 5749)
  assert round(float(dev.scores.mean()), 3) == 2.364
  assert round(float(train.scores.mean()), 3) == 2.701
  assert dev.scores.min() == 0.0 and dev.scores.max() == 5.0
  assert len(stsb.sentences(train)) == 2 * 5749


def test_synthetic_pairs_are_seeded_per_split_and_scored_in_range():
  dev = stsb.load_pairs("synthetic", "dev")
  assert dev == stsb.load_pairs("synthetic", "dev")
  assert dev != stsb.load_pairs("synthetic", "train")
  assert len(dev) == 64 and ((dev.scores >= 0) & (dev.scores <= 5)).all()
  assert len(set(dev.scores.tolist())) > 5  # graded, so correlations mean something
  with pytest.raises(ValueError, match="split='val'"):
    stsb.load_pairs("synthetic", "val")
