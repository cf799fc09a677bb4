"""Where data sets and prepared TFDS data live on this machine.

A data set is named either by a directory path or by a bare name such as `scifact`. Bare names are
looked up in `$RETRIEVAL_JAX_DATA` first (a cluster or CI can point it at a shared mount), then in
`shared/data` beside the repository (the layout of a development checkout). Nothing here downloads:
a name that is not found resolves to None and the caller decides whether to fetch it (`beir_tfds`).
"""

import os
import pathlib

DATA_ENV = "RETRIEVAL_JAX_DATA"
TFDS_DIR_ENV = "RETRIEVAL_JAX_TFDS_DIR"

# The directory holding the `retrieval_jax` package; a module constant so tests can move it.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def search_roots() -> list[pathlib.Path]:
  """The directories in which a bare data set name is looked up, in priority order."""
  roots = []
  env = os.environ.get(DATA_ENV)
  if env:
    roots.append(pathlib.Path(env).expanduser())
  roots.append(REPO_ROOT.parent / "shared" / "data")
  return roots


def find_dataset(name_or_path: str | os.PathLike) -> pathlib.Path | None:
  """Finds a local copy of a data set.

  Args:
    name_or_path: an existing directory (returned as is), or a data set name such as `scifact`.

  Returns:
    The directory, or None when there is no local copy (the caller may then download it).
  """
  given = pathlib.Path(name_or_path).expanduser()
  if given.is_dir():
    return given
  for root in search_roots():
    candidate = root / name_or_path
    if candidate.is_dir():
      return candidate
  return None


def default_tfds_dir() -> pathlib.Path:
  """Where prepared TFDS data goes: `$RETRIEVAL_JAX_TFDS_DIR`, else `~/tensorflow_datasets`."""
  return pathlib.Path(os.environ.get(TFDS_DIR_ENV) or "~/tensorflow_datasets").expanduser()
