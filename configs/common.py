"""Defaults every recipe config starts from: model, data, evaluation.

Configs import only `ml_collections` and each other. Every field here can be overridden
on the command line, e.g. `--config.eval.index=scann`.
"""

import ml_collections


def model_config() -> ml_collections.ConfigDict:
  """The encoder: a HF directory, hub id or `minilm` (the packaged all-MiniLM-L6-v2)."""
  return ml_collections.ConfigDict({
      "name": "minilm",
      "pooling": "auto",        # auto | cls | mean | pooler
      "normalize": "auto",      # auto | true | false
      "dtype": "float32",       # bfloat16 on accelerators
  })


def data_config() -> ml_collections.ConfigDict:
  """A BEIR data set (directory or name) and its dev split."""
  return ml_collections.ConfigDict({
      "name": "scifact",
      "eval_split": "dev",
      "dev_fraction": 0.2,
      "tfds_dir": ml_collections.FieldReference(None, field_type=str),
  })


def eval_config() -> ml_collections.ConfigDict:
  """How `retrieval_jax.evaluation` retrieves and what it measures."""
  return ml_collections.ConfigDict({
      "index": "exact",         # exact | scann | bm25
      "depth": 100,
      "metrics": ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map"),
      "max_length": 256,
      "query_max_length": ml_collections.FieldReference(None, field_type=int),
      "batch_size": 128,
      "save_embeddings": False,
      "embeddings_dtype": "float32",
      "check_exact": False,
      "progress": True,
      "scann": {
          "num_leaves": ml_collections.FieldReference(None, field_type=int),
          "num_leaves_to_search": ml_collections.FieldReference(None, field_type=int),
          "reorder_k": 100,
          "anisotropic_quantization_threshold": 0.2,
      },
      "bm25": {"k1": 0.9, "b": 0.4},
  })


def base_config() -> ml_collections.ConfigDict:
  """The shared skeleton: seed, model, data, eval."""
  return ml_collections.ConfigDict({
      "seed": 0,
      "model": model_config(),
      "data": data_config(),
      "eval": eval_config(),
  })
