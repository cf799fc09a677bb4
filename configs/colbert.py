r"""ColBERT: Khattab & Zaharia 2020, *ColBERT: Efficient and Effective Passage Search via
Contextualized Late Interaction over BERT*. arXiv 2004.12832 (SIGIR 2020).

One BERT encoder with a 128-d linear head (no bias) gives an L2-normalised vector per token.
Queries are `[CLS] [Q] q... [SEP]` padded with [MASK] to 32 tokens (query augmentation: the
[MASK] positions are not attended to, yet their vectors score); documents `[CLS] [D] d...
[SEP]` up to 180 tokens, punctuation vectors dropped. A query scores a document by the sum over
its vectors of the best cosine with any document vector (MaxSim). The paper trains on MS MARCO
BM25 triples with a 2-way softmax over (q, d+, d-): batch 32, Adam lr 3e-6 constant, 200k steps.

  python main.py --config=configs/colbert.py --workdir=/tmp/colbert
  python main.py --config=configs/colbert.py:cpu --workdir=runs/colbert_cpu      # ~17 min
  python main.py --config=configs/colbert.py:smoke --workdir=/tmp/colbert_smoke  # seconds
  python main.py --config=configs/colbert.py --config.loss.type=nway_in_batch ...   # ColBERTv2
  python eval/retrieval.py --model=runs/colbert_cpu --index=maxsim --data=scifact --split=dev
  python eval/retrieval.py --model=runs/colbert_cpu --index=bm25_maxsim --rerank_depth=100

Following the code where it differs from the paper: the markers are [unused0]/[unused1] and
the text is truncated to one token less than the length before the marker goes in
(stanford-futuredata/ColBERT, `QueryTokenizer.tensorize`); masked document tokens never win a
max (ColBERTv2's `colbert_score_reduce`, PyLate); v1 kept zero vectors in the max. The paper's
Adam is AdamW with no weight decay here (the same update). Variants:
  `` (default)  the paper's recipe: bert-base-uncased on BEIR MS MARCO train, BM25 triples.
  `cpu`         the packaged all-MiniLM-L6-v2 with a new 128-d head on SciFact train minus
                dev, BM25 negatives, the seed, batch, steps and schedule of
                `configs/dpr.py:cpu`, PyLate's in-batch loss (the paper's pairwise one:
                --config.loss.type=pairwise); evaluated end to end (`dev`) and re-ranking
                BM25's top 100 (`dev_rerank`).
  `smoke`       a tiny random encoder on synthetic data: seconds; used by the tests.
"""

from configs import common


def get_config(arg: str = ""):
  config = common.training_config()
  config.recipe = "colbert"
  variant = arg or "default"

  config.model.update(name="bert-base-uncased", pooling="cls", normalize="false",
                      shared_towers=True, token_dim=128)
  config.model.colbert = common.colbert_model_config()
  config.data.update(name="msmarco", train_split="train")
  # source: bm25 (the paper's triples) | pool (another run's mined negatives, `pool_from`:
  # its workdir; TCT-ColBERT's HN+ teacher).
  config.negatives = dict(source="bm25", num=1, depth=30, top_k=None, k1=0.9, b=0.4,
                          pool_from="")
  # The batcher's caps are the format's (the marker is inserted after tokenising).
  config.train.query_max_length = config.model.colbert.get_ref("query_length")
  config.train.passage_max_length = config.model.colbert.get_ref("doc_max_length")
  config.train.update(batch_size=32, num_epochs=None, num_steps=200_000,
                      checkpoint_every_steps=5000)
  config.optim.update(lr=3e-6, warmup_steps=0, warmup_ratio=None, decay="constant",
                      weight_decay=0.0, max_grad_norm=None)
  config.loss = dict(type="pairwise", grad_cache=False, chunk_size=32)
  config.evals = {"dev": common.maxsim_eval("dev")}

  if variant == "cpu":
    config.model.update(name="minilm", pooling="mean", normalize="true")
    config.data.update(name="scifact", train_split="train_minus_dev")
    config.train.update(num_steps=None, num_epochs=4, pad_to_multiple_of=16, log_every_steps=5,
                        checkpoint_every_steps=20)
    # A new head on 76 steps: DPR cpu's schedule rather than the paper's 3e-6 for 200k steps,
    # and PyLate's in-batch loss: the 2-way softmax's signal is too weak for that few steps
    # (WORKSPACE, "ColBERT and TCT-ColBERT").
    config.optim.update(lr=2e-5, warmup_steps=None, warmup_ratio=0.1, decay="linear",
                        max_grad_norm=1.0)
    config.loss.type = "in_batch"
    rerank = common.maxsim_eval("dev")
    rerank.update(index="bm25_maxsim", rerank_depth=100)
    config.evals = {"dev": common.maxsim_eval("dev"), "dev_rerank": rerank}
  elif variant == "smoke":
    config.model.update(name="random", tokenizer="minilm", token_dim=16)
    config.model.colbert.update(query_length=16, doc_max_length=32)
    config.data.update(name="synthetic", train_split="train_minus_dev")
    config.negatives.update(depth=8)
    config.train.update(batch_size=8, num_steps=6, pad_to_multiple_of=16, log_every_steps=2,
                        checkpoint_every_steps=3, progress=False)
    config.optim.update(lr=1e-3, warmup_steps=1, decay="linear")
    config.evals.dev.update(depth=10, token_depth=20, metrics=("ndcg@10", "recall@10"),
                            batch_size=16, progress=False)
    # Exact token search (every leaf, every token re-scored): two ScaNN builds of the same
    # vectors need not agree, and the tests compare evaluations of one checkpoint.
    config.evals.dev.scann.update(num_leaves=8, num_leaves_to_search=8, reorder_k=4096)
    rerank = config.evals.dev.copy_and_resolve_references()
    rerank.update(index="bm25_maxsim", rerank_depth=50)
    config.evals.dev_rerank = rerank
  elif variant != "default":
    raise ValueError(f"unknown variant {arg!r}; use one of '', 'cpu', 'smoke'")
  return config
