r"""RetroMAE: Xiao et al. 2022, *RetroMAE: Pre-Training Retrieval-oriented Language Models Via
Masked Auto-Encoder*. arXiv 2205.12035 (EMNLP 2022).

The encoder reads a block with 30% of its words masked (MLM loss); a one-layer decoder
reconstructs the whole block from the encoder's [CLS] vector, each position seeing a sampled
half of the others (enhanced decoding); the two cross-entropies are summed. The default is
the released recipe (staoxiao/RetroMAE `examples/pretrain/README.md`, `src/pretrain/`):
bert-base-uncased, 512-token blocks, encoder mask 0.3, decoder mask 0.5, batch 256 (32 × 8
GPUs), AdamW lr 1e-4, 10% warm-up then linear decay, weight decay 0.01, 8 epochs, Wikipedia
+ BookCorpus.

  python main.py --config=configs/retromae.py --workdir=gs://bucket/retromae \
      --config.data.sources='("tfds:wikipedia/20230601.en", "jsonl:/data/bookcorpus.jsonl")'
  python main.py --config=configs/retromae.py:smoke --workdir=/tmp/retromae_smoke  # seconds

Following the code where it differs from the paper: blocks are cut from the concatenated
token stream (the reference packs whole sentences, then truncates a block to its length).
Variants:
  `` (default)  the released recipe; `data.sources` must name the pre-training texts.
  `smoke`       a tiny random encoder on the synthetic corpus: seconds; used by the tests.
"""

from configs import common

VARIANTS = ("default", "smoke")


def get_config(arg: str = ""):
  config = common.training_config()
  config.recipe = "retromae"
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}; use one of {VARIANTS[1:]} or ''")

  config.model.update(name="bert-base-uncased", pooling="cls", normalize="false",
                      shared_towers=True, mlm_head=True)
  # A checkpoint without a masked-LM head (a sentence-transformers model) gets a random one.
  config.model.missing_mlm_head = "random"
  config.data.update(name="msmarco", max_length=512,
                     sources=("tfds:wikipedia/20230601.en", "jsonl:bookcorpus.jsonl"))
  config.data.masking = dict(encoder_ratio=0.3, decoder_ratio=0.5, mask_replace=0.8,
                             random_replace=0.1, max_predictions=512, decoder_pool=256)
  config.loss = dict(type="retromae")  # `mlm`: the encoder's MLM loss alone (the ablation)
  config.train.update(batch_size=256, num_epochs=8, num_steps=None,
                      checkpoint_every_steps=20_000)
  config.optim.update(lr=1e-4, warmup_ratio=0.1, warmup_steps=None, decay="linear",
                      weight_decay=0.01, max_grad_norm=1.0)
  config.evals.dev.update(max_length=256)

  if variant == "smoke":
    config.model.update(name="random", tokenizer="minilm")
    config.data.update(name="synthetic", sources=("synthetic",), max_length=32)
    config.train.update(batch_size=8, num_epochs=None, num_steps=6, log_every_steps=2,
                        checkpoint_every_steps=3, progress=False)
    config.optim.update(lr=1e-3, warmup_ratio=None, warmup_steps=1)
    config.evals.dev.update(max_length=32, depth=10, metrics=("ndcg@10", "recall@10"),
                            batch_size=16, progress=False)
  return config
