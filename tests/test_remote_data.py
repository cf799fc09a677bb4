"""Data, negative caches and embeddings on gs:// (the local GCS emulator, `tests/gcs_emulator.py`).

Each remote result is compared with the same thing done on a local copy: remote paths must change
where the bytes live, nothing else.
"""

import json
import pathlib
import re

import numpy as np
import pytest
from etils import epath

from retrieval_jax import encode
from retrieval_jax.data import beir, beir_tfds, paths, splits
from retrieval_jax.index import mining
from tests.test_data_beir import CORPUS, write_beir

SPLITS = ("test", "train", "dev", "train_minus_dev")


def upload(local: pathlib.Path, remote: str) -> str:
  """Copies the files under `local` to `remote`, keeping the layout; returns `remote`."""
  for path in sorted(local.rglob("*")):
    if path.is_file():
      target = epath.Path(remote) / path.relative_to(local).as_posix()
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(path.read_bytes())
  return remote


@pytest.fixture
def local_and_remote(tmp_path, gcs_bucket):
  """A BEIR directory with a gzip corpus, on disk and uploaded: (local path, `gs://.../ds`)."""
  local = write_beir(tmp_path / "ds", gz=True)
  return local, upload(local, f"{gcs_bucket}/beir/ds")


def test_find_dataset_returns_a_remote_directory_as_epath(gcs_bucket, tmp_path, monkeypatch):
  remote = upload(write_beir(tmp_path / "ds"), f"{gcs_bucket}/ds")
  found = paths.find_dataset(remote)
  assert isinstance(found, epath.Path) and str(found) == remote
  assert paths.find_dataset(f"{gcs_bucket}/ds/queries.jsonl") is None  # A file, not a directory.
  # A missing remote directory is never looked up as a name: not even where pathlib would
  # find it (`root / "gs://b/x"` is `root/gs:/b/x`).
  missing = f"{gcs_bucket}/absent"
  (tmp_path / "roots" / missing).mkdir(parents=True)
  monkeypatch.setenv(paths.DATA_ENV, str(tmp_path / "roots"))
  assert paths.find_dataset(missing) is None


def test_locate_files_lists_remote_files(local_and_remote):
  local, remote = local_and_remote
  files = beir.locate_files(remote)
  assert str(files.root) == remote and str(files.corpus) == f"{remote}/corpus.jsonl.gz"
  assert {name: str(path) for name, path in files.qrels.items()} == {
      name: f"{remote}/qrels/{name}.tsv" for name in beir.locate_files(local).qrels}


def test_beir_files_json_round_trip_keeps_the_scheme(local_and_remote):
  _, remote = local_and_remote
  files = beir.locate_files(remote)
  blob = json.loads(json.dumps(files.to_json()))
  assert blob["root"] == remote  # Not `gs:/...`, as pathlib would write it.
  again = beir.BeirFiles.from_json(blob)
  assert again == files and again.to_json() == blob
  assert again.corpus.is_file()


def test_remote_directory_loads_as_its_local_copy(local_and_remote, tmp_path):
  local, remote = local_and_remote
  for split in SPLITS:
    expected = beir.load_beir(local, split, use_tfds=False)
    assert beir.load_beir(remote, split, use_tfds=False) == expected, split
    # What the recipes call (`recipes.contrastive.load_split`): through TFDS, prepared locally.
    via_recipes = splits.load_split(remote, split, tfds_dir=str(tmp_path / "tfds"))
    assert via_recipes == expected, split
  dev = beir.load_beir(remote, "dev", use_tfds=False)
  assert dev.name == "ds" and dev.query_ids and set(dev.query_ids) == set(dev.qrels)
  assert dev.corpus_ids == [doc["_id"] for doc in CORPUS]


def test_prepared_remote_source_is_reused(local_and_remote, tmp_path):
  _, remote = local_and_remote
  data_dir = str(tmp_path / "tfds")
  first = beir_tfds.prepare_local(beir.locate_files(remote), data_dir)
  second = beir_tfds.prepare_local(beir.locate_files(remote), data_dir)
  assert {part: b.data_path for part, b in first.items()} == {
      part: b.data_path for part, b in second.items()}
  # The recorded source paths keep their scheme, so messages name the bucket.
  recorded = beir_tfds.read_prepared(first).files
  assert str(recorded.corpus) == f"{remote}/corpus.jsonl.gz"


def test_remote_tfds_dir_is_refused_before_any_work(local_and_remote, gcs_bucket):
  _, remote = local_and_remote
  with pytest.raises(ValueError, match=rf"TFDS data_dir {re.escape(gcs_bucket)}/tfds: .*local"):
    splits.load_split(remote, "test", tfds_dir=f"{gcs_bucket}/tfds")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_malformed_remote_line_names_the_remote_file(tmp_path, gcs_bucket, gz):
  corpus = "".join(json.dumps(doc) + "\n" for doc in CORPUS[:2]) + "not json\n"
  remote = upload(write_beir(tmp_path / "ds", corpus=corpus, gz=gz), f"{gcs_bucket}/ds")
  name = "corpus.jsonl.gz" if gz else "corpus.jsonl"
  expected = re.escape(f"{remote}/{name}, line 3: invalid JSON")
  with pytest.raises(beir.DataError, match=expected):
    beir.load_beir(remote, "test", use_tfds=False)
  with pytest.raises(ValueError, match=expected):
    splits.load_split(remote, "test", tfds_dir=str(tmp_path / "tfds"))


def test_negative_pool_round_trip_on_gcs(local_and_remote, gcs_bucket, gcs_server):
  local, _ = local_and_remote
  pool = mining.bm25_negative_pool(beir.load_beir(local, "train", use_tfds=False), depth=4)
  mining.save_pool(f"{gcs_bucket}/run/negatives/bm25_train.npz", pool)
  mining.save_pool(f"{gcs_bucket}/run/negatives/no_suffix", pool)  # `.npz` appended, as numpy does.
  bucket = gcs_bucket.removeprefix("gs://")
  assert sorted(gcs_server.list_objects(bucket, "run/")) == [
      "run/negatives/bm25_train.npz", "run/negatives/no_suffix.npz"]
  loaded = mining.load_pool(epath.Path(gcs_bucket) / "run" / "negatives" / "bm25_train.npz")
  assert loaded.query_ids == pool.query_ids and loaded.num_docs == pool.num_docs
  for name in ("candidates", "counts", "positives"):
    np.testing.assert_array_equal(getattr(loaded, name), getattr(pool, name))
    assert getattr(loaded, name).dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_save_embeddings_on_gcs(gcs_bucket, tmp_path, dtype):
  values = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
  path = encode.save_embeddings(f"{gcs_bucket}/eval/nested/corpus_embeddings.npy", values, dtype)
  assert str(path) == f"{gcs_bucket}/eval/nested/corpus_embeddings.npy" and path.exists()
  with path.open("rb") as f:
    remote = np.load(f)
  local = np.load(encode.save_embeddings(tmp_path / "corpus_embeddings.npy", values, dtype))
  assert remote.dtype == dtype and remote.shape == values.shape
  np.testing.assert_array_equal(remote, local)
