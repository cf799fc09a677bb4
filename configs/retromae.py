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
  python main.py --config=configs/retromae.py:cpu --workdir=runs/retromae_cpu
  python main.py --config=configs/dpr.py:cpu --config.model.name=runs/retromae_cpu \
      --workdir=runs/dpr_from_retromae_cpu          # fine-tune a retriever from it
  python main.py --config=configs/retromae.py:cpu --config.model.name=runs/retromae_cpu \
      --workdir=runs/retromae_cpu_more              # continue: encoder, MLM head and decoder
  python main.py --config=configs/retromae.py:smoke --workdir=/tmp/retromae_smoke  # seconds

Following the code where it differs from the paper: blocks are cut from the concatenated
token stream (the reference packs whole sentences, then truncates a block to its length).
`loss.type=mlm` trains the encoder's MLM loss alone (no decoder), the paper's baseline.
`model.decoder`: `auto` continues from the decoder exported beside a RetroMAE starting point,
`random`, or a decoder export's directory. Variants:
  `` (default)  the released recipe; `data.sources` must name the pre-training texts.
  `cpu`         continued pre-training of the packaged all-MiniLM-L6-v2 (its MLM head starts
                at random: the package has none) on the SciFact corpus, 256-token blocks,
                batch 16, 60 steps at FlagEmbedding's continued pre-training lr 2e-5
                (`retromae_pretrain`); mean pooling, MiniLM's own, for evaluation.
  `scratch_cpu` a small randomly initialised encoder (4 layers, width 256, MiniLM's uncased
                vocabulary) pre-trained from nothing on the SciFact corpus and the Wikispeedia
                articles: 128-token blocks, batch 32, 500 steps, lr 5e-4; [CLS] pooling.
  `smoke`       a tiny random encoder on the synthetic corpus: seconds; used by the tests.
"""

from configs import common

VARIANTS = ("default", "cpu", "scratch_cpu", "smoke")


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
  # `auto`: the decoder exported beside a RetroMAE starting point (pre-training continues),
  # random otherwise; `random`; or a decoder export's directory.
  config.model.decoder = "auto"
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

  if variant == "cpu":
    # The packaged MiniLM keeps its own mean pooling for evaluation and fine-tuning; the
    # decoder reads the [CLS] state whatever the pooling.
    config.model.update(name="minilm", pooling="mean", normalize="true")
    config.data.update(name="scifact", sources=("beir:scifact",), max_length=256)
    config.train.update(batch_size=16, num_epochs=None, num_steps=60, log_every_steps=5,
                        checkpoint_every_steps=20)
    config.optim.update(lr=2e-5, warmup_ratio=0.1)
    config.evals.dev.update(batch_size=32)
  elif variant == "scratch_cpu":
    config.model.update(name="random", tokenizer="minilm", pooling="cls", normalize="false")
    config.model.random.update(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)
    config.data.update(name="scifact", sources=("beir:scifact", "wikispeedia"), max_length=128)
    config.train.update(batch_size=32, num_epochs=None, num_steps=500,
                        log_every_steps=25, checkpoint_every_steps=250)
    config.optim.update(lr=5e-4, warmup_ratio=0.1)
    config.evals.dev.update(batch_size=64)
  elif variant == "smoke":
    config.model.update(name="random", tokenizer="minilm")
    config.data.update(name="synthetic", sources=("synthetic",), max_length=32)
    config.train.update(batch_size=8, num_epochs=None, num_steps=6, log_every_steps=2,
                        checkpoint_every_steps=3, progress=False)
    config.optim.update(lr=1e-3, warmup_ratio=None, warmup_steps=1)
    config.evals.dev.update(max_length=32, depth=10, metrics=("ndcg@10", "recall@10"),
                            batch_size=16, progress=False)
  return config
