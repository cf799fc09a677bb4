"""The `retrieval` evaluator: BEIR-style retrieval (exact, ScaNN, BM25; FirstP or MaxP).

Entry keys (see `configs/common.retrieval_eval`): `data` {name, split, dev_fraction,
tfds_dir}, and the `evaluation.EvalSettings` fields (index, depth, metrics, max_length,
max_passages, query_max_length, batch_size, save_embeddings, embeddings_dtype,
check_exact, progress, scann {...}, bm25 {k1, b}). Dense indexes need the `query` and
`passage` models; BM25 needs none.
"""

from __future__ import annotations

import logging
from typing import Any

from etils import epath

from retrieval_jax import evaluation, run_config
from retrieval_jax.data.splits import load_split
from retrieval_jax.index import ScannConfig

logger = logging.getLogger(__name__)


def settings(entry: Any) -> evaluation.EvalSettings:
  """EvalSettings from a `retrieval` entry."""
  scann = entry.scann
  return evaluation.EvalSettings(
      index=entry.index, depth=entry.depth, metrics=tuple(entry.metrics),
      max_length=entry.max_length, max_passages=entry.get("max_passages", 1),
      query_max_length=entry.query_max_length,
      batch_size=entry.batch_size, embeddings_dtype=entry.embeddings_dtype,
      save_embeddings=entry.save_embeddings, check_exact=entry.check_exact,
      scann=ScannConfig(num_leaves=scann.num_leaves,
                        num_leaves_to_search=scann.num_leaves_to_search,
                        reorder_k=scann.reorder_k,
                        anisotropic_quantization_threshold=scann.anisotropic_quantization_threshold),
      bm25_k1=entry.bm25.k1, bm25_b=entry.bm25.b,
      progress=entry.get("progress", True))


def data_fields(name: str, entry: Any, defaults: Any) -> dict:
  """The entry's data with unset fields taken from the run's `config.data`."""
  data = dict(entry.get("data") or {})
  defaults = defaults or {}
  for key, fallback in (("name", None), ("dev_fraction", 0.2), ("tfds_dir", None)):
    if data.get(key) is None:
      data[key] = defaults.get(key, fallback) if hasattr(defaults, "get") else fallback
  if not data.get("name"):
    raise ValueError(f"evals.{name}.data.name is not set (and the config has no data.name)")
  if not data.get("split"):
    raise ValueError(f"evals.{name}.data.split is not set")
  return data


class SplitEvaluator:
  """An evaluator of one BEIR split: its settings (`parse(entry)`), data fields and the
  split, read once and kept for the periodic evaluations."""

  def __init__(self, name: str, entry: Any, defaults: Any, parse):
    try:
      self.settings = parse(entry)
    except ValueError as error:
      raise ValueError(f"evals.{name}: {error}") from None
    self.name = name
    self.data_config = data_fields(name, entry, defaults)
    self._data = None

  @property
  def data(self):
    """The split, read once and kept for the periodic evaluations."""
    if self._data is None:
      config = self.data_config
      with run_config.input_errors():  # a missing data set is the user's input, read lazily
        self._data = load_split(config["name"], config["split"],
                                dev_fraction=config["dev_fraction"],
                                tfds_dir=config["tfds_dir"], key=f"evals.{self.name}.data.name")
      logger.info("evals.%s: %s/%s, %d queries, %d documents", self.name, self._data.name,
                  config["split"], len(self._data.query_ids), len(self._data.corpus_ids))
    return self._data


class RetrievalEvaluator(SplitEvaluator):
  """Retrieves for every query of one split and scores the run with pytrec_eval."""

  def __init__(self, name: str, entry: Any, defaults: Any = None):
    super().__init__(name, entry, defaults, settings)
    self.requires = () if self.settings.index == "bm25" else ("query", "passage")

  def run(self, models: Any, out_dir: epath.Path | None) -> dict[str, float]:
    result = evaluation.evaluate_retrieval(self.data, self.settings, models.get("passage"),
                                           out_dir, query_encoder=models.get("query"))
    return {**result.metrics, **result.extra}


def build(name: str, entry: Any, defaults: Any = None) -> RetrievalEvaluator:
  return RetrievalEvaluator(name, entry, defaults)
