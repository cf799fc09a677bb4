"""The SQuAD TFDS builder: array_record splits read back by random access, equal ReQA data."""

import gzip
import json

import pytest

from retrieval_jax.data import reqa, squad_tfds
from tests.test_reqa_data import P0, TINY_SQUAD


@pytest.fixture
def squad_dir(tmp_path):
  root = tmp_path / "squad"
  root.mkdir()
  with gzip.open(root / "train-v1.1.json.gz", "wt") as f:
    json.dump(TINY_SQUAD, f)
  dev = json.loads(json.dumps(TINY_SQUAD))
  dev["data"] = dev["data"][1:3]
  (root / "dev-v1.1.json").write_text(json.dumps(dev))
  return root


def test_both_splits_prepare_once_and_rebuild_the_same_reqa_data(squad_dir, tmp_path):
  data_dir = tmp_path / "tfds"
  builder = squad_tfds.prepare(squad_dir, data_dir)
  assert sorted(builder.info.splits) == ["dev", "train"]
  assert builder.info.splits["train"].num_examples == 10  # every question, unanswered too
  files = sorted(p.name for p in (data_dir / "retrieval_jax_squad").rglob("*array_record*"))
  assert files and all("array_record" in name for name in files)
  for split in ("train", "dev"):
    assert squad_tfds.load_reqa_tfds(squad_dir, split, data_dir) == reqa.load_reqa(squad_dir,
                                                                                   split)
  record = builder.as_data_source(split="train")[2]
  assert record["id"] == b"a2" and list(record["answers"]["answer_start"]) == [
      P0.index("1901"), P0.index("1950"), P0.index("in 1901")]
  # Prepared once: a second builder only opens the files.
  again = squad_tfds.prepare(squad_dir, data_dir)
  assert again.data_path == builder.data_path


def test_read_back_keeps_article_and_paragraph_numbers(squad_dir, tmp_path):
  rebuilt = squad_tfds.read_squad(squad_tfds.prepare(squad_dir, tmp_path / "tfds"), "train")
  assert [a["title"] for a in rebuilt["data"]] == ["Alpha", "Beta", "Gamma", "Delta"]
  assert [len(a["paragraphs"]) for a in rebuilt["data"]] == [2, 2, 1, 1]
  # The question-less paragraph is kept as an empty placeholder.
  assert rebuilt["data"][0]["paragraphs"][1] == {"context": "", "qas": []}
  assert rebuilt["data"][1]["paragraphs"][1]["qas"][1] == {"id": "b3", "question": "Unanswered?",
                                                          "answers": []}


def test_an_edited_file_is_a_new_config_and_a_single_file_is_one_split(squad_dir, tmp_path):
  before = squad_tfds.source_config(squad_dir).name
  (squad_dir / "dev-v1.1.json").write_text(json.dumps(TINY_SQUAD))
  assert squad_tfds.source_config(squad_dir).name != before
  assert list(squad_tfds.squad_splits(squad_dir / "dev-v1.1.json")) == ["dev"]
  single = squad_tfds.prepare(squad_dir / "train-v1.1.json.gz", tmp_path / "tfds")
  assert list(single.info.splits) == ["train"]
  with pytest.raises(ValueError, match=r"split='dev' is not prepared"):
    squad_tfds.read_squad(single, "dev")


def test_bad_inputs(squad_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="holds no dev-v1.1.json"):
    squad_tfds.squad_splits(tmp_path)
  with pytest.raises(ValueError, match="must be on a local disk"):
    squad_tfds.prepare(squad_dir, "gs://bucket/tfds")
  broken = json.loads(json.dumps(TINY_SQUAD))
  del broken["data"][0]["paragraphs"][0]["qas"][0]["id"]
  (squad_dir / "dev-v1.1.json").write_text(json.dumps(broken))
  with pytest.raises(ValueError, match=r"dev-v1\.1\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\] "
                                       r"has no 'id'"):
    squad_tfds.prepare(squad_dir, tmp_path / "tfds")
