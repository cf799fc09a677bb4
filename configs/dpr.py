r"""DPR: Karpukhin et al. 2020, *Dense Passage Retrieval for Open-Domain Question Answering*.

arXiv 2004.04906. Two BERT-base towers (question and passage, [CLS] vectors, dot product),
trained with the in-batch softmax: each question's positive against every passage of the global
batch, plus one BM25 hard negative per question (the "Gold + 1 BM25" setting of the paper's
Table 3). The paper's hyperparameters: batch 128, Adam lr 1e-5 with linear warm-up and decay,
dropout 0.1, gradient clipping at 2.0 (the released code), 40 epochs, 256-token passages.

  python main.py --config=configs/dpr.py --workdir=/tmp/dpr
  python main.py --config=configs/dpr.py:cpu --workdir=/tmp/dpr_cpu         # ~15 min, 2 cores
  python main.py --config=configs/dpr.py:smoke --workdir=/tmp/dpr_smoke     # seconds
  python main.py --config=configs/dpr.py --config.optim.lr=2e-5 --config.mesh.model=2 ...
  python eval/retrieval.py --model=/tmp/dpr_cpu --data=scifact --split=dev  # a checkpoint

Data: the paper trains on Natural Questions with DPR's own BM25 negatives; here any BEIR-format
data set with train judgements (`data.name`: a directory or a name such as `msmarco`; BM25
negatives are mined with bm25s from its corpus). Variants after the colon:
  `` (default)  the paper's recipe: bert-base-uncased towers on BEIR MS MARCO train.
  `cpu`         the packaged all-MiniLM-L6-v2 (shared towers, mean pooling, cosine / 0.05) on
                SciFact train queries minus the dev split; evaluated on that dev split.
  `smoke`       a tiny random encoder on synthetic data: seconds; used by the tests.
"""

from configs import common


def get_config(arg: str = ""):
  config = common.training_config()
  config.recipe = "dpr"
  variant = arg or "default"

  # The paper's recipe.
  config.model.update(name="bert-base-uncased", pooling="cls", normalize="false",
                      shared_towers=False)
  config.data.update(name="msmarco", train_split="train")
  config.negatives = dict(
      source="bm25",
      num=1,          # hard negatives per question
      depth=30,       # BM25 candidates kept per question (DPR's files hold ~30); positives removed
      top_k=None,     # sample each epoch among the best top_k candidates (None: all `depth`)
      k1=0.9, b=0.4,  # BM25 (Pyserini's defaults)
  )
  config.train.update(batch_size=128, num_epochs=40, query_max_length=256,
                      passage_max_length=256, checkpoint_every_steps=2000)
  config.optim.update(lr=1e-5, warmup_steps=1237, warmup_ratio=None, weight_decay=0.0,
                      max_grad_norm=2.0)
  config.loss.update(scale=1.0, symmetric=False)
  config.evals.dev.update(max_length=256)

  if variant == "cpu":
    # Fine-tune the packaged sentence embedder as a cosine retriever. Shared towers: SciFact's
    # few hundred training questions are too few to fork two towers from one checkpoint.
    config.model.update(name="minilm", pooling="mean", normalize="true", shared_towers=True)
    config.data.update(name="scifact", train_split="train_minus_dev")
    config.negatives.update(depth=30)
    config.train.update(batch_size=32, num_epochs=4, query_max_length=64,
                        passage_max_length=128, pad_to_multiple_of=16, log_every_steps=5,
                        checkpoint_every_steps=20)
    config.optim.update(lr=2e-5, warmup_steps=None, warmup_ratio=0.1, max_grad_norm=1.0)
    config.loss.update(scale=20.0)  # cosine similarities / temperature 0.05
    config.evals.dev.update(batch_size=32)  # faster than 128 on CPU (WORKSPACE, "Measured")
  elif variant == "smoke":
    config.model.update(name="random", tokenizer="minilm", pooling="cls", normalize="false")
    config.data.update(name="synthetic", train_split="train_minus_dev")
    config.negatives.update(depth=8)
    config.train.update(batch_size=8, num_epochs=None, num_steps=6, query_max_length=16,
                        passage_max_length=32, pad_to_multiple_of=16, log_every_steps=2,
                        checkpoint_every_steps=3, progress=False)
    config.optim.update(lr=1e-3, warmup_steps=1, warmup_ratio=None)
    config.evals.dev.update(max_length=32, depth=10, metrics=("ndcg@10", "recall@10"),
                       batch_size=16, progress=False)
  elif variant != "default":
    raise ValueError(f"unknown variant {arg!r}; use one of '', 'cpu', 'smoke'")
  return config
