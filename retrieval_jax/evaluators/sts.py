"""The `sts` evaluator: semantic textual similarity on STS-B, Spearman and Pearson × 100.

Each pair's two sentences are embedded with one model role, scored by the cosine of their
vectors, and the cosines are correlated with the gold scores through `scipy.stats` (`spearmanr`,
`pearsonr`), as sentence-transformers' `EmbeddingSimilarityEvaluator` does with its cosine
similarity; the numbers are × 100, as STS results are reported (SG-OPT's tables included).

Entry keys (all optional but `type`):
  data        STS-B source (`retrieval_jax.data.stsb`): a directory, a data set name, or
              `tfds:<directory or name>`; None: `stsb`, found like every data set
  split       `train`, `dev` (default) or `test`
  tfds_dir    where `tfds:` sources are prepared (None: `$RETRIEVAL_JAX_TFDS_DIR`, else
              `~/tensorflow_datasets`)
  role        the `EvalModels` role that embeds the sentences (default `query`)
  max_length  token cap, special tokens included (default 128)
  batch_size  encoding batch size, global (default 128)
  progress    show the encoding progress bar (default True)

Writes `metrics.json` ({spearman, pearson}), `scores.tsv` (per pair: gold score and cosine) and
`eval_info.json` (data, pairs, settings, seconds) in its output folder.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from etils import epath
import jax
import numpy as np
from scipy import stats

from retrieval_jax import encode, files, run_config
from retrieval_jax.data import stsb

logger = logging.getLogger(__name__)

DEFAULTS = {"data": None, "split": "dev", "tfds_dir": None, "role": "query", "max_length": 128,
            "batch_size": 128, "progress": True}


def cosine_scores(left: np.ndarray, right: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Row-wise cosine of two [n, d] arrays: each row divided by max(its norm, eps), then dotted,
  as sentence-transformers' `pairwise_cos_sim` (so a zero vector scores 0).

  In float64 whatever the embeddings' dtype: sentence-transformers computes in the embeddings'
  own dtype (float32 from a model), which can break the tie between two pairs whose cosines are
  equal, e.g. two pairs of identical sentences.
  """
  def unit(rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), eps)

  return np.einsum("nd,nd->n", unit(left), unit(right))


def correlations(gold: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
  """{spearman, pearson} × 100 of predicted against gold scores (`scipy.stats`).

  Raises:
    ValueError: Fewer than 2 pairs or different lengths.
  """
  if len(gold) != len(predicted) or len(gold) < 2:
    raise ValueError(f"correlations need two equally long score lists of at least 2 pairs, got "
                     f"{len(gold)} gold and {len(predicted)} predicted scores")
  return {"spearman": 100.0 * float(stats.spearmanr(gold, predicted).statistic),
          "pearson": 100.0 * float(stats.pearsonr(gold, predicted).statistic)}


def embed_pairs(encoder: Any, pairs: stsb.StsPairs, *, max_length: int, batch_size: int,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """([n, d] sentence1 vectors, [n, d] sentence2 vectors), each distinct sentence embedded once.

  A collective with several processes (each encodes a share of the sentences).
  """
  unique = list(dict.fromkeys(stsb.sentences(pairs)))
  row = {sentence: i for i, sentence in enumerate(unique)}
  vectors = encode.encode_texts_sharded(encoder, unique, max_length=max_length,
                                        batch_size=batch_size, progress=progress,
                                        desc="encode sentences")
  return (vectors[[row[s] for s in pairs.sentence1]],
          vectors[[row[s] for s in pairs.sentence2]])


def settings(name: str, entry: Any) -> dict:
  """The entry's keys over `DEFAULTS`, checked; errors name `evals.<name>.<key>`."""
  given = {key: entry.get(key) for key in entry.keys() if key != "type"}
  unknown = sorted(set(given) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"evals.{name} has unknown keys {unknown}; known: {sorted(DEFAULTS)}")
  values = dict(DEFAULTS)
  values.update({key: value for key, value in given.items() if value is not None})
  if values["split"] not in stsb.SPLITS:
    raise ValueError(f"evals.{name}.split={values['split']!r} is not one of {stsb.SPLITS}")
  for key in ("max_length", "batch_size"):
    if int(values[key]) < 1:
      raise ValueError(f"evals.{name}.{key}={values[key]} is below 1")
  return values


class StsEvaluator:
  """Correlates one model role's cosines with the gold scores of one STS-B split."""

  def __init__(self, name: str, entry: Any, defaults: Any = None):
    del defaults  # The run's `config.data` is a retrieval data set; STS-B names its own.
    self.name = name
    self.settings = settings(name, entry)
    self.requires = (self.settings["role"],)
    self._pairs: stsb.StsPairs | None = None

  @property
  def pairs(self) -> stsb.StsPairs:
    """The split's pairs, read on first use and kept for the periodic evaluations."""
    if self._pairs is None:
      config = self.settings
      with run_config.input_errors():  # a missing file is the user's input, read lazily
        self._pairs = stsb.load_pairs(config["data"], config["split"],
                                      tfds_dir=config["tfds_dir"])
      logger.info("evals.%s: STS-B %s, %d pairs", self.name, self._pairs.source,
                  len(self._pairs))
    return self._pairs

  def run(self, models: Any, out_dir: epath.Path | None) -> dict[str, float]:
    config = self.settings
    pairs = self.pairs
    start = time.perf_counter()
    left, right = embed_pairs(models.get(config["role"]), pairs, max_length=config["max_length"],
                              batch_size=config["batch_size"], progress=config["progress"])
    cosines = cosine_scores(left, right)
    values = correlations(pairs.scores, cosines)
    seconds = time.perf_counter() - start
    if out_dir is not None and jax.process_index() == 0:
      write_results(files.as_path(out_dir), pairs, cosines, values,
                    info={"data": pairs.source, "pairs": len(pairs), "settings": config,
                          "seconds": seconds})
    return values


def write_results(out: epath.Path, pairs: stsb.StsPairs, cosines: np.ndarray,
                  values: dict[str, float], info: dict) -> None:
  """metrics.json (`values`), scores.tsv (pair, gold, cosine) and eval_info.json (`info`)."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "metrics.json").write_text(json.dumps(values, indent=2, sort_keys=True))
  lines = ["pair\tgold\tcosine"] + [f"{i}\t{float(gold)!r}\t{float(cos)!r}"
                                     for i, (gold, cos) in enumerate(zip(pairs.scores, cosines))]
  (out / "scores.tsv").write_text("\n".join(lines) + "\n")
  (out / "eval_info.json").write_text(json.dumps(info, indent=2, default=str))


def build(name: str, entry: Any, defaults: Any = None) -> StsEvaluator:
  return StsEvaluator(name, entry, defaults)
