"""Small, fast fixtures shared by tests: a tiny random BERT directory and a tiny BEIR data set."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

from retrieval_jax.models import hf
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, init_params
from retrieval_jax.models.pooling import PoolingConfig

TINY_DOCS = {
    "d1": ("Photosynthesis", "Plants turn sunlight, water and carbon dioxide into sugar."),
    "d2": ("Black holes", "A black hole is a region where gravity prevents light from escaping."),
    "d3": ("Vaccines", "Vaccines train the immune system to recognise a pathogen."),
    "d4": ("", "Coffee contains caffeine, a stimulant of the central nervous system."),
    "d5": ("Rivers", "The Nile and the Amazon are the two longest rivers on Earth."),
    "d6": ("Tides", "Tides are caused by the gravitational pull of the moon and the sun."),
}
TINY_QUERIES = {
    "q1": "how do plants make sugar from sunlight",
    "q2": "why can light not escape a black hole",
    "q3": "what does caffeine do",
    "q4": "what causes tides",
}
TINY_QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d4": 1}, "q4": {"d6": 1, "d5": 0}}


def write_tiny_beir(root: pathlib.Path, split: str = "test") -> pathlib.Path:
  """Writes a valid six-document BEIR directory and returns it."""
  root.mkdir(parents=True, exist_ok=True)
  with open(root / "corpus.jsonl", "w") as f:
    for doc_id, (title, text) in TINY_DOCS.items():
      f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
  with open(root / "queries.jsonl", "w") as f:
    for query_id, text in TINY_QUERIES.items():
      f.write(json.dumps({"_id": query_id, "text": text}) + "\n")
  (root / "qrels").mkdir(exist_ok=True)
  with open(root / "qrels" / f"{split}.tsv", "w") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    for query_id, docs in TINY_QRELS.items():
      for doc_id, score in docs.items():
        f.write(f"{query_id}\t{doc_id}\t{score}\n")
  return root


def write_tiny_bert(out: pathlib.Path, tokenizer_dir: pathlib.Path, seed: int = 0,
                    pooling: PoolingConfig = PoolingConfig(mode="mean", normalize=True)):
  """A random 2-layer, 32-wide BERT with the given tokenizer, saved as a HF + ST directory."""
  vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
  config = EncoderConfig(vocab_size=len(vocab), hidden_size=32, num_layers=2, num_heads=4,
                         intermediate_size=64, max_position_embeddings=128)
  params = jax.tree_util.tree_map(
      np.asarray, init_params(TextEncoder(config, pooling), jax.random.PRNGKey(seed)))
  params = jax.tree_util.tree_map(np.asarray, params_unboxed(params))
  hf.save_pretrained(out, config, params, pooling=pooling, tokenizer_dir=tokenizer_dir,
                     max_seq_length=128)
  return out, config, params


def restore_towers(config, workdir, step=None):
  """(query encoder, passage encoder, step) of a training checkpoint, as the evaluators get them."""
  from retrieval_jax import recipes  # pylint: disable=g-import-not-at-top

  models, step = recipes.eval_models(config, workdir, step)
  return models.query, models.passage, step


def params_unboxed(params):
  """Plain arrays from logically-partitioned boxes."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.meta.unbox(params)


REPO = pathlib.Path(__file__).resolve().parents[1]


def with_overrides(config, overrides: dict):
  """`config` with dotted keys set, as `--config.a.b=value` would (e.g. {"train.num_steps": 2})."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def one_device_xla_flags() -> str:
  """$XLA_FLAGS without conftest's fake device count, for a subprocess on one CPU device (or
  with a count of its own); the other flags (the test run's compile level) stay."""
  return " ".join(flag for flag in os.environ.get("XLA_FLAGS", "").split()
                  if not flag.startswith("--xla_force_host_platform_device_count="))


def run_python(args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
  """`python ARGS` from the repository root on one CPU device (no fake device split), with
  `env` added to the environment."""
  env = {**os.environ, "XLA_FLAGS": one_device_xla_flags(), "JAX_PLATFORMS": "cpu",
         **(env or {})}
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, check=check, timeout=600)


def assert_rejected_before_compiling(config, workdir, key: str, monkeypatch) -> None:
  """`train.run(config)` raises a ValueError naming `key` before `jax.jit` is ever called."""
  import pytest  # pylint: disable=g-import-not-at-top

  from retrieval_jax import train  # pylint: disable=g-import-not-at-top

  compiled = []
  monkeypatch.setattr(train.jax, "jit", lambda *a, **k: compiled.append(1))
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    train.run(config, workdir, "train")
  assert not compiled
  assert not (pathlib.Path(workdir) / "checkpoints").exists()


def assert_shapes_follow_the_global_batch(batcher) -> None:
  """Each process converts only its rows: the shapes must not depend on which rows (else the
  processes' arrays would not form one global batch)."""
  inner = batcher.inner.batch(0)
  whole = batcher.convert(inner)
  for half in (slice(0, 3), slice(3, None)):
    rows = {k: v[half] if getattr(v, "ndim", 0) and k not in batcher.host_keys else v
            for k, v in inner.items()}
    part = batcher.convert(rows)
    for key, value in whole.items():
      if key not in batcher.host_keys:
        assert part[key].shape[1:] == value.shape[1:], key
