"""One split of a data set named in a config: a BEIR directory (local or `gs://`) or name, or
`synthetic`."""

from __future__ import annotations

from retrieval_jax.data import synthetic
from retrieval_jax.data.beir import BeirData, DataError, load_beir


def load_split(name: str, split: str, *, dev_fraction: float = 0.2,
               tfds_dir: str | None = None, key: str = "data.name") -> BeirData:
  """`split` of data set `name`.

  Raises:
    ValueError: Naming `key` (the config key that named the data) and the split when the data
      cannot be read.
  """
  try:
    if name == synthetic.NAME:
      return synthetic.synthetic_beir(split, dev_fraction=dev_fraction)
    return load_beir(name, split, dev_fraction=dev_fraction, data_dir=tfds_dir)
  except (DataError, FileNotFoundError) as error:
    raise ValueError(f"{key}={name!r}, split {split!r}: {error}") from error
