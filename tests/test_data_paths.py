"""Tests for data discovery: directories, $RETRIEVAL_JAX_DATA, shared/data beside the repository."""

import pathlib

import pytest

from retrieval_jax.data import paths


@pytest.fixture
def isolated(tmp_path, monkeypatch):
  """No env override; a fake repository at tmp/repo (so shared data is tmp/shared/data); cwd tmp."""
  monkeypatch.delenv(paths.DATA_ENV, raising=False)
  monkeypatch.delenv(paths.TFDS_DIR_ENV, raising=False)
  monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")
  monkeypatch.chdir(tmp_path)
  return tmp_path


def test_repo_root_holds_the_package():
  assert (paths.REPO_ROOT / "retrieval_jax" / "data" / "paths.py").is_file()


def test_existing_directory_is_returned_as_is(isolated):
  target = isolated / "some" / "beir_dir"
  target.mkdir(parents=True)
  assert paths.find_dataset(target) == target
  assert paths.find_dataset(str(target)) == target
  # A relative path is taken relative to the working directory, and returned unchanged.
  assert paths.find_dataset("some/beir_dir") == pathlib.Path("some/beir_dir")


def test_name_found_under_env(isolated, monkeypatch):
  (isolated / "env_data" / "scifact").mkdir(parents=True)
  monkeypatch.setenv(paths.DATA_ENV, str(isolated / "env_data"))
  assert paths.find_dataset("scifact") == isolated / "env_data" / "scifact"


def test_name_found_beside_repo(isolated):
  (isolated / "shared" / "data" / "nfcorpus").mkdir(parents=True)
  assert paths.find_dataset("nfcorpus") == isolated / "shared" / "data" / "nfcorpus"


def test_env_wins_over_shared(isolated, monkeypatch):
  for root in ("env_data", "shared/data"):
    (isolated / root / "fiqa").mkdir(parents=True)
  monkeypatch.setenv(paths.DATA_ENV, str(isolated / "env_data"))
  assert paths.find_dataset("fiqa") == isolated / "env_data" / "fiqa"


def test_env_without_the_name_falls_back_to_shared(isolated, monkeypatch):
  (isolated / "env_data").mkdir()
  (isolated / "shared" / "data" / "quora").mkdir(parents=True)
  monkeypatch.setenv(paths.DATA_ENV, str(isolated / "env_data"))
  assert paths.find_dataset("quora") == isolated / "shared" / "data" / "quora"


def test_not_found_is_none(isolated, monkeypatch):
  monkeypatch.setenv(paths.DATA_ENV, str(isolated / "nowhere"))
  assert paths.find_dataset("scifact") is None
  (isolated / "a_file").write_text("not a directory")
  assert paths.find_dataset(isolated / "a_file") is None


def test_default_tfds_dir(isolated, monkeypatch):
  monkeypatch.setenv("HOME", str(isolated / "home"))
  assert paths.default_tfds_dir() == isolated / "home" / "tensorflow_datasets"
  monkeypatch.setenv(paths.TFDS_DIR_ENV, str(isolated / "prepared"))
  assert paths.default_tfds_dir() == isolated / "prepared"
