r"""ANCE: Xiong et al. 2020, *Approximate Nearest Neighbor Negative Contrastive Learning for Dense
Text Retrieval*. arXiv 2007.00808 (ICLR 2021).

One shared RoBERTa-base encoder ([CLS], dot product) trained on hard negatives retrieved from the
whole corpus by the model being trained: every 10k steps the corpus is re-encoded with the
current parameters, an ANN index is built and the training queries are searched; negatives are
sampled from the top 200 minus the positives, one per positive, with the NLL of the positive
against its negative (no in-batch negatives). Training starts from BM25 negatives (the paper's
"BM25 warm-up"). Released passage run: batch 64 (8 per GPU x 4 GPUs x 2 accumulation), LAMB,
lr 1e-6, 5,000 warm-up steps, 512 tokens. Here the refresh runs inside the training job, in a
background thread, instead of in a second inference job.

  python main.py --config=configs/ance.py --workdir=/tmp/ance
  python main.py --config=configs/ance.py:cpu --workdir=/tmp/ance_cpu        # ~18 min, 2 cores
  python main.py --config=configs/ance.py:smoke --workdir=/tmp/ance_smoke    # seconds
  python main.py --config=configs/ance.py:cpu --config.negatives.refresh_mode=sync ...
  python main.py --config=configs/ance.py --config.data.max_passages=4 \
      --config.evals.dev.max_passages=4 ...                                      # MaxP documents
  python eval/retrieval.py --model=/tmp/ance_cpu --data=scifact --split=dev --index=scann

Differences from the released code, on purpose: the embedding head (a dense layer and a
LayerNorm over [CLS]) is not used, the encoder's [CLS] vector is; the BM25 warm-up is the first
`negatives.first_refresh` steps of the same run rather than a separate training. Variants:
  `` (default)  the paper's passage recipe (FirstP; MaxP with data.max_passages=4, ANCE's
                document setting is 4 passages of 512 tokens) on BEIR MS MARCO train.
  `cpu`         the packaged all-MiniLM-L6-v2 on SciFact train minus dev, the same steps, seed,
                batch, optimiser and in-batch loss as `configs/dpr.py:cpu`, so that the two
                differ only in where the negatives come from: BM25 for 20 steps, then ANN
                negatives refreshed at steps 20 and 50 (ScaNN over the 5,183 documents).
  `smoke`       a tiny random encoder on synthetic data, refreshes every 2 steps: seconds.
"""

import ml_collections

from configs import common


def ann_negatives() -> ml_collections.ConfigDict:
  """ANCE's negatives section (`recipes.ance.ann_negatives`): mined by the model's own index."""
  return ml_collections.ConfigDict(dict(
      source="ann",
      num=1,                  # negatives per positive
      depth=200,              # ANN candidates kept per query (positives removed): "top 200"
      top_k=None,             # sample among the best top_k of them (None: all `depth`)
      index="scann",          # scann | exact
      refresh_every=10000,    # steps between index refreshes
      first_refresh=ml_collections.FieldReference(10000, field_type=int),  # BM25 warm-up
      refresh_mode="async",   # async: train on while the index is rebuilt | sync: wait
      mine_at_start=False,    # True: mine with the initial model before step 1, no warm-up
      # Drop candidates scoring within this margin of the best positive (likely unjudged
      # positives); None keeps them, as ANCE does.
      false_negative_margin=ml_collections.FieldReference(None, field_type=float),
      encode_batch_size=128,  # rows per forward when encoding the corpus at a refresh
      scann=dict(num_leaves=ml_collections.FieldReference(None, field_type=int),
                 num_leaves_to_search=ml_collections.FieldReference(None, field_type=int),
                 reorder_k=250),
      bm25_depth=100,         # BM25 warm-up candidates per query
      k1=0.9, b=0.4,          # BM25 (Pyserini's defaults)
  ))


def get_config(arg: str = ""):
  config = common.training_config()
  config.recipe = "ance"
  variant = arg or "default"

  # The paper's passage recipe.
  config.model.update(name="roberta-base", pooling="cls", normalize="false", shared_towers=True)
  config.data.update(name="msmarco", train_split="train", max_passages=1)
  config.negatives = ann_negatives()
  # The released scripts train until stopped (a checkpoint, and so a refresh, every 10k steps)
  # and name no length; 100k steps here: override train.num_steps to taste.
  config.train.update(batch_size=64, num_epochs=None, num_steps=100000, query_max_length=64,
                      passage_max_length=512, checkpoint_every_steps=10000)
  config.optim.update(name="lamb", lr=1e-6, warmup_steps=5000, warmup_ratio=None,
                      weight_decay=0.0, max_grad_norm=None, eps=1e-8)
  config.loss.update(scale=1.0, symmetric=False, in_batch=False)
  config.evals.dev.update(max_length=512, max_passages=1)

  if variant == "cpu":
    # configs/dpr.py:cpu with ANN negatives: same model, data, batch, steps, seed, optimiser.
    config.model.update(name="minilm", pooling="mean", normalize="true")
    config.data.update(name="scifact", train_split="train_minus_dev")
    config.negatives.update(refresh_every=30, first_refresh=20, bm25_depth=30,
                            encode_batch_size=32)
    config.train.update(batch_size=32, num_epochs=4, num_steps=None, query_max_length=64,
                        passage_max_length=128, pad_to_multiple_of=16, log_every_steps=5,
                        checkpoint_every_steps=20)
    config.optim.update(name="adamw", lr=2e-5, warmup_steps=None, warmup_ratio=0.1,
                        max_grad_norm=1.0)
    config.loss.update(scale=20.0, in_batch=True)  # cosine / 0.05, in-batch + hard negatives
    config.evals.dev.update(max_length=256, batch_size=32)
  elif variant == "smoke":
    config.model.update(name="random", tokenizer="minilm", pooling="cls", normalize="false")
    config.data.update(name="synthetic", train_split="train_minus_dev")
    config.negatives.update(depth=8, bm25_depth=8, refresh_every=2, first_refresh=2,
                            encode_batch_size=32)
    config.train.update(batch_size=8, num_epochs=None, num_steps=6, query_max_length=16,
                        passage_max_length=32, pad_to_multiple_of=16, log_every_steps=2,
                        checkpoint_every_steps=3, progress=False)
    config.optim.update(name="adamw", lr=1e-3, warmup_steps=1)
    config.loss.update(in_batch=True)
    config.evals.dev.update(max_length=32, depth=10, metrics=("ndcg@10", "recall@10"),
                       batch_size=16, progress=False)
  elif variant != "default":
    raise ValueError(f"unknown variant {arg!r}; use one of '', 'cpu', 'smoke'")
  return config
