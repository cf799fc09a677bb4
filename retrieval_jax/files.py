"""Paths that may be local or remote (`gs://bucket/...`): one type, `etils.epath.Path`.

epath is what Orbax and TFDS use, so a workdir, a data directory or an export directory can
be a bucket path everywhere. Libraries that only write local files (safetensors, ScaNN's
serialiser, HF tokenizers) go through `writing_dir` and `local_copy`, which stage a remote
directory in a local temporary one.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import Iterator

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` names an object store (`gs://`, `s3://`, ...) rather than a local file."""
  return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath path; `~` expanded for local ones."""
  return epath.Path(path) if is_remote(path) else epath.Path(path).expanduser()


def copy_tree(source: str | os.PathLike, destination: str | os.PathLike) -> None:
  """Copies the files under `source` to `destination`, keeping the layout (either may be
  remote); existing files are replaced."""
  source, destination = as_path(source), as_path(destination)
  destination.mkdir(parents=True, exist_ok=True)
  for child in source.iterdir():
    if child.is_dir():
      copy_tree(child, destination / child.name)
    else:
      child.copy(destination / child.name, overwrite=True)


@contextlib.contextmanager
def writing_dir(destination: str | os.PathLike) -> Iterator[pathlib.Path]:
  """A local directory whose files end up in `destination`.

  Local destinations are created and yielded as they are. Remote ones get a temporary local
  directory, copied to `destination` when the block ends without an error (nothing is copied
  after an error, so a failed write leaves no partial directory behind).
  """
  if not is_remote(destination):
    local = pathlib.Path(os.fspath(as_path(destination)))
    local.mkdir(parents=True, exist_ok=True)
    yield local
    return
  with tempfile.TemporaryDirectory(prefix="retrieval_jax_") as staging:
    yield pathlib.Path(staging)
    copy_tree(staging, destination)


def local_copy(source: str | os.PathLike) -> pathlib.Path:
  """A local directory with the files of `source`: itself when local, else a copy in a new
  temporary directory (left for the process's lifetime: the caller keeps reading from it)."""
  if not is_remote(source):
    return pathlib.Path(os.fspath(as_path(source)))
  local = pathlib.Path(tempfile.mkdtemp(prefix="retrieval_jax_")) / as_path(source).name
  copy_tree(source, local)
  return local
