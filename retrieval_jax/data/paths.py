"""Where data sets and prepared TFDS data live: on this machine or in a bucket.

A data set is named either by a directory path or by a bare name such as `scifact`. Bare names are
looked up in `$RETRIEVAL_JAX_DATA` first (a cluster or CI can point it at a shared mount), then in
`shared/data` beside the repository (the layout of a development checkout). Nothing here downloads:
a name that is not found resolves to None and the caller decides whether to fetch it (`beir_tfds`).

A path with a scheme (`gs://bucket/beir/scifact`) is remote: it is an `etils.epath.Path` (what
Orbax and TFDS use), never looked up as a bare name, and never resolved or `~`-expanded. Local
paths stay `pathlib.Path`, so local behaviour is pathlib's, exactly: epath's local `resolve` does
not follow symlinks and its `glob` skips dot files, which would change data set names, prepared
TFDS configs and which qrels files are seen.
"""

import os
import pathlib
from typing import Union

from etils import epath

from retrieval_jax.files import is_remote

DATA_ENV = "RETRIEVAL_JAX_DATA"
TFDS_DIR_ENV = "RETRIEVAL_JAX_TFDS_DIR"

# A user-given path: `pathlib.Path` when local, `epath.Path` when remote (see `user_path`).
AnyPath = Union[pathlib.Path, epath.Path]

# The directory holding the `retrieval_jax` package; a module constant so tests can move it.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def user_path(path: str | os.PathLike) -> AnyPath:
  """`path` as `epath.Path` when remote, else as `pathlib.Path`.

  pathlib cannot hold a remote path: `pathlib.Path("gs://b/x")` is `gs:/b/x`.
  """
  return epath.Path(path) if is_remote(path) else pathlib.Path(path)


def _expanded(path: str | os.PathLike) -> AnyPath:
  """`user_path` with `~` expanded in local paths."""
  path = user_path(path)
  return path if is_remote(path) else path.expanduser()


def resolved(path: AnyPath) -> AnyPath:
  """The absolute, symlink-free form of a local path; a remote path is already absolute."""
  return path if is_remote(path) else pathlib.Path(path).resolve()


def search_roots() -> list[AnyPath]:
  """The directories in which a bare data set name is looked up, in priority order."""
  roots = []
  env = os.environ.get(DATA_ENV)
  if env:
    roots.append(_expanded(env))
  roots.append(REPO_ROOT.parent / "shared" / "data")
  return roots


def find_dataset(name_or_path: str | os.PathLike) -> AnyPath | None:
  """Finds a copy of a data set: a directory, local or remote, or a name in the search roots.

  Args:
    name_or_path: an existing directory (returned as is; a remote one as an `epath.Path`), or a
      data set name such as `scifact`.

  Returns:
    The directory, or None when there is no copy (the caller may then download it). A remote path
    that is not a directory is None too: it is never a name to look up.
  """
  if is_remote(name_or_path):
    remote = epath.Path(name_or_path)
    return remote if remote.is_dir() else None
  given = pathlib.Path(name_or_path).expanduser()
  if given.is_dir():
    return given
  for root in search_roots():
    candidate = root / name_or_path
    if candidate.is_dir():
      return candidate
  return None


def default_tfds_dir() -> AnyPath:
  """Where prepared TFDS data goes: `$RETRIEVAL_JAX_TFDS_DIR` (may be remote), else
  `~/tensorflow_datasets`."""
  return _expanded(os.environ.get(TFDS_DIR_ENV) or "~/tensorflow_datasets")
