"""Defaults every recipe config starts from: model, data, evaluation, and training.

Configs import only `ml_collections` and each other. Every field here can be overridden
on the command line, e.g. `--config.evals.dev.index=scann`.
"""

import ml_collections


def model_config() -> ml_collections.ConfigDict:
  """The encoder: a HF directory, hub id or `minilm` (the packaged all-MiniLM-L6-v2)."""
  return ml_collections.ConfigDict({
      "type": "transformer",    # the model registry's name (retrieval_jax.models.registry)
      "name": "minilm",
      "pooling": "auto",        # auto | cls | mean | pooler
      "normalize": "auto",      # auto | true | false
      "dtype": "float32",       # bfloat16 on accelerators
      # A linear projection of the pooled vector to this width (Chang et al. 2020: 512),
      # randomly initialised; exported as a sentence-transformers Dense module. None: none.
      "projection_dim": ml_collections.FieldReference(None, field_type=int),
  })


def data_config() -> ml_collections.ConfigDict:
  """A BEIR data set (directory or name); `dev_fraction` of its train queries form `dev`."""
  return ml_collections.ConfigDict({
      "name": "scifact",
      "dev_fraction": 0.2,
      "tfds_dir": ml_collections.FieldReference(None, field_type=str),
  })


def retrieval_eval(split: str = "dev") -> ml_collections.ConfigDict:
  """A `retrieval` evaluator entry of `config.evals` (`retrieval_jax.evaluators.retrieval`).

  `data.name`, `data.dev_fraction` and `data.tfds_dir` left None take the run's `data.*`.
  """
  return ml_collections.ConfigDict({
      "type": "retrieval",
      "data": {
          "name": ml_collections.FieldReference(None, field_type=str),
          "split": split,
          "dev_fraction": ml_collections.FieldReference(None, field_type=float),
          "tfds_dir": ml_collections.FieldReference(None, field_type=str),
      },
      "index": "exact",         # exact | scann | bm25
      "depth": 100,
      "metrics": ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map"),
      "max_length": 256,
      "query_max_length": ml_collections.FieldReference(None, field_type=int),
      "batch_size": 128,
      # Passages per document: 1 is FirstP (the first max_length tokens); N > 1 is MaxP (the
      # first N passages of max_length tokens, a document scores its best passage).
      "max_passages": 1,
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


def maxsim_eval(split: str = "dev") -> ml_collections.ConfigDict:
  """A `maxsim` evaluator entry (`retrieval_jax.evaluators.maxsim`): ColBERT retrieval."""
  entry = retrieval_eval(split)
  for key in ("max_length", "query_max_length", "max_passages", "save_embeddings",
              "embeddings_dtype", "check_exact"):
    del entry[key]
  entry.update(type="maxsim", index="maxsim", batch_size=32)
  entry.rerank_depth = 100     # index=bm25_maxsim: BM25 candidates re-ranked with MaxSim
  entry.token_depth = 100      # index=maxsim: nearest tokens fetched per query vector (k')
  # None: the model's document length (model.colbert.doc_max_length).
  entry.doc_max_length = ml_collections.FieldReference(None, field_type=int)
  entry.save_index = False
  # Token search only proposes candidates, re-scored exactly: no reordering, so ScaNN keeps
  # no float32 copy of the token vectors (WORKSPACE, "ColBERT").
  entry.scann.reorder_k = 0
  return entry


def reqa_eval(split: str = "train") -> ml_collections.ConfigDict:
  """A `reqa` evaluator entry (`retrieval_jax.evaluators.reqa`): ReQA SQuAD, Recall@k and MRR.

  `data.train_fraction` None evaluates every question of the file; a fraction evaluates the
  questions of the articles `retrieval_jax.data.reqa.split_by_article(n, fraction, seed)`
  holds out.
  """
  return ml_collections.ConfigDict({
      "type": "reqa",
      "data": {
          "path": "squad",        # a SQuAD v1.1 .json[.gz], a directory, or a data set name
          "split": split,         # train | dev (the file of that name in a directory)
          "train_fraction": ml_collections.FieldReference(None, field_type=float),
          "seed": 0,
          "candidates": "all",    # all: every candidate of the file | test: the test articles'
          "max_questions": ml_collections.FieldReference(None, field_type=int),
      },
      "index": "exact",           # exact | bm25
      "depth": 100,
      "max_length": 256,          # candidate (sentence + paragraph) tokens
      "query_max_length": 64,
      "batch_size": 128,
      "progress": True,
      "bm25": {"k1": 0.9, "b": 0.4},
  })


def sts_eval(split: str = "dev") -> ml_collections.ConfigDict:
  """An `sts` evaluator entry (`retrieval_jax.evaluators.sts`): STS-B Spearman and Pearson."""
  return ml_collections.ConfigDict({
      "type": "sts",
      # A directory, a data set name or `tfds:<directory or name>`; None: `stsb`, found
      # like every data set.
      "data": ml_collections.FieldReference(None, field_type=str),
      "split": split,             # train | dev | test
      "tfds_dir": ml_collections.FieldReference(None, field_type=str),
      "role": "query",
      "max_length": 128,
      "batch_size": 128,
      "progress": True,
  })


def colbert_model_config() -> ml_collections.ConfigDict:
  """ColBERT's input format (`retrieval_jax.data.colbert_format`), under `config.model.colbert`."""
  return ml_collections.ConfigDict({
      "query_marker": "[unused0]",   # [Q]: BERT vocabularies' unused token, as released
      "doc_marker": "[unused1]",     # [D]
      "query_length": 32,            # queries padded with [MASK] to exactly this
      "doc_max_length": 180,
      "attend_to_mask_tokens": False,
      "mask_punctuation": True,
  })


def base_config() -> ml_collections.ConfigDict:
  """The shared skeleton: seed, model, data, evals (big_vision style: name -> evaluator)."""
  return ml_collections.ConfigDict({
      "seed": 0,
      # Free text recorded in config.json and TensorBoard's config table (e.g. "lr sweep");
      # safe to change on resume.
      "note": "",
      "model": model_config(),
      "data": data_config(),
      "evals": {"dev": retrieval_eval("dev")},
  })


def train_config() -> ml_collections.ConfigDict:
  """The training loop (`retrieval_jax.train`): steps, lengths, logging, checkpoints, eval."""
  return ml_collections.ConfigDict({
      "batch_size": 128,            # global: rows per step over all processes and devices
      "num_epochs": 1,
      # Optimizer steps; overrides num_epochs when set.
      "num_steps": ml_collections.FieldReference(None, field_type=int),
      # Stop this invocation after this step (with a checkpoint), as a preempted job would;
      # the schedule still runs to the full length when the run is resumed.
      "stop_at_step": ml_collections.FieldReference(None, field_type=int),
      "query_max_length": 64,
      "passage_max_length": 256,
      "pad_to_multiple_of": 32,     # padded lengths are multiples: few compiled shapes
      "log_every_steps": 50,
      "eval_every_steps": 0,        # 0: run config.evals only at the end (train_and_eval)
      "eval_at_start": False,       # also evaluate the starting model (step 0)
      # "<evaluator>/<metric>": every evaluation that improves it saves the params apart
      # (workdir/best_checkpoint); the run's final metrics, export and --mode=eval use them.
      "select_best": ml_collections.FieldReference(None, field_type=str),
      "select_mode": "max",         # max | min
      "checkpoint_every_steps": 1000,
      "keep_checkpoints": 3,
      "async_checkpoints": True,
      "progress": True,
      "export": True,               # HF + sentence-transformers export at the end
  })


def optim_config() -> ml_collections.ConfigDict:
  """`retrieval_jax.optim.optimizer_from_config`: AdamW, warm-up + linear decay, clipping."""
  return ml_collections.ConfigDict({
      "name": "adamw",              # adamw | lamb
      "lr": 2e-5,
      "warmup_steps": ml_collections.FieldReference(None, field_type=int),
      "warmup_ratio": ml_collections.FieldReference(0.1, field_type=float),
      "decay": "linear",            # after the warm-up: linear (to 0 at the end) | constant
      "weight_decay": 0.0,
      "max_grad_norm": 1.0,
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-8,
  })


def mesh_config() -> ml_collections.ConfigDict:
  """Device mesh axes; -1 takes the devices the other axis leaves.

  `refresh_devices`: devices of every process set aside from training for ANCE's refreshes
  (`sharding.split_devices`), so that mining overlaps training; 0 shares all of them.
  """
  return ml_collections.ConfigDict({"data": -1, "model": 1, "refresh_devices": 0})


def loss_config() -> ml_collections.ConfigDict:
  """The contrastive loss (`retrieval_jax.losses.in_batch_softmax_loss`) and GradCache."""
  return ml_collections.ConfigDict({
      "scale": 1.0,                 # 1 / temperature
      "symmetric": False,
      # False: each query is scored against its own positive and hard negatives only (ANCE's
      # NLL), not against the other queries' passages.
      "in_batch": True,
      "grad_cache": False,
      "chunk_size": 32,             # rows per GradCache forward; divides both towers' rows
  })


def training_config() -> ml_collections.ConfigDict:
  """`base_config` plus the sections every trained recipe has."""
  config = base_config()
  config.model.shared_towers = False
  # None: the checkpoint's dropout (BERT: 0.1); a number overrides hidden and attention dropout.
  config.model.dropout = ml_collections.FieldReference(None, field_type=float)
  config.model.remat = False
  # The tokenizer's directory, hub id or `minilm`; None: the model's own. Required when
  # name == "random": a freshly initialised encoder of the shape below (smoke runs, tests).
  config.model.tokenizer = ml_collections.FieldReference(None, field_type=str)
  config.model.random = ml_collections.ConfigDict({
      "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64})
  # The shape of a model.type="bow_mlp" tower (Chang et al. 2020's BoW-MLP, its vocabulary
  # from model.tokenizer): mean of token embeddings, MLP (tanh | relu), linear to output_dim.
  config.model.bow = ml_collections.ConfigDict({
      "embed_dim": 512, "hidden_widths": (1024, 1024), "activation": "tanh", "output_dim": 512})
  # Heads beyond pooling (models/heads.py): a masked-LM head tied to the word embeddings
  # (loaded from *ForMaskedLM checkpoints), ColBERT's token head width, a projection MLP.
  config.model.mlm_head = False
  config.model.token_dim = ml_collections.FieldReference(None, field_type=int)
  config.model.mlp_widths = ml_collections.FieldReference(None, field_type=tuple)
  config.data.train_split = "train_minus_dev"
  # Training documents: 1 is FirstP (truncated to train.passage_max_length), N > 1 is MaxP
  # (up to N passages of that length; a document's score is its best passage's).
  config.data.max_passages = 1
  config.train = train_config()
  config.optim = optim_config()
  config.mesh = mesh_config()
  config.loss = loss_config()
  return config
