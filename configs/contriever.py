r"""Contriever: Izacard et al. 2021, *Unsupervised Dense Information Retrieval with Contrastive
Learning*. arXiv 2112.09118 (TMLR 2022).

No labels: two independent random crops of a 256-token chunk are a positive pair; negatives
are a queue of keys from a momentum (EMA) copy of the encoder (MoCo). The default is the
released script (`example_scripts/contriever.sh`, `src/options.py`): bert-base-uncased,
mean pooling, no normalisation, crops of 5–50% of the chunk, token deletion 0.1, queue
131,072, momentum 0.9995, temperature 0.05, AdamW lr 5e-5 (β2 0.98, ε 1e-6, weight decay
0.01), 20k warm-up then linear decay over 500k steps, batch 2,048 (64 × 32 GPUs), Wikipedia
and CCNet sampled 50:50 (`sampling_coefficient` 0).

  python main.py --config=configs/contriever.py --workdir=gs://bucket/contriever \
      --config.data.sources='("jsonl:/data/wikipedia.jsonl", "jsonl:/data/ccnet.jsonl")'
  # Wikipedia through TFDS instead (prepared as array_record in data.tfds_dir):
      --config.data.sources='("tfds:wikipedia/20230601.en", "jsonl:/data/ccnet.jsonl")'
  python main.py --config=configs/contriever.py:cpu --workdir=runs/contriever_cpu
  python main.py --config=configs/contriever.py:smoke --workdir=/tmp/contriever_smoke  # seconds
  python eval/retrieval.py --model=runs/contriever_cpu --data=scifact --split=dev

Following the code where it differs from the paper: the paper's text gives crops of at least
10% of the chunk, the released script 5% (`data.crop.ratio_min=0.1` for the paper's); a chunk
is drawn with replacement (`MultiDataset.__getitem__`; `data.crop.sample=permutation` visits
each once per epoch). Variants:
  `` (default)  the released script; `data.sources` must name the pre-training texts
                (`data/text_sources.py`: `jsonl:`, `tfds:`, `beir:`, `wikispeedia`).
  `inbatch`     the default with `src/inbatch.py`'s loss: no queue, no key encoder.
  `cpu`         unsupervised adaptation of the packaged all-MiniLM-L6-v2 to the SciFact corpus
                (its documents only: no queries, no labels), evaluated on the SciFact dev split.
  `scratch_cpu` a small randomly initialised encoder (4 layers, width 256, MiniLM's
                uncased vocabulary) pre-trained from nothing on the SciFact corpus and the
                Wikispeedia articles, sampled 50:50; evaluated on SciFact dev against BM25.
  `smoke`       a tiny random encoder on the synthetic corpus: seconds; used by the tests.
"""

from configs import common

VARIANTS = ("default", "inbatch", "cpu", "scratch_cpu", "smoke")


def get_config(arg: str = ""):
  config = common.training_config()
  config.recipe = "contriever"
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}; use one of {VARIANTS[1:]} or ''")

  config.model.update(name="bert-base-uncased", pooling="mean", normalize="false",
                      shared_towers=True)
  # Texts to crop (`data/text_sources.py`); `data.name` is the evaluation data.
  config.data.update(name="msmarco", sources=("jsonl:wikipedia.jsonl", "jsonl:ccnet.jsonl"))
  config.data.crop = dict(chunk_length=256, ratio_min=0.05, ratio_max=0.5, deletion=0.1,
                          sampling_coefficient=0.0, sample="replacement")
  config.train.update(batch_size=2048, num_epochs=None, num_steps=500_000,
                      checkpoint_every_steps=20_000)
  config.optim.update(lr=5e-5, warmup_steps=20_000, warmup_ratio=None, decay="linear",
                      weight_decay=0.01, b2=0.98, eps=1e-6, max_grad_norm=None)
  config.loss = dict(type="moco", queue_size=131_072, momentum=0.9995, temperature=0.05)
  config.evals.dev.update(max_length=256)

  if variant == "inbatch":
    config.loss.type = "in_batch"
  elif variant == "cpu":
    config.model.update(name="minilm", normalize="true")
    config.data.update(name="scifact", sources=("beir:scifact",))
    config.train.update(batch_size=32, num_steps=150, pad_to_multiple_of=16, log_every_steps=10,
                        checkpoint_every_steps=50)
    config.optim.update(lr=1e-5, warmup_steps=15)
    # A queue of 32 batches and a faster key encoder: 150 steps would barely move one at
    # momentum 0.9995 (its keys would stay the initial model's).
    config.loss.update(queue_size=1024, momentum=0.99)
    config.evals.dev.update(batch_size=32)
  elif variant == "scratch_cpu":
    config.model.update(name="random", tokenizer="minilm", normalize="true")
    config.model.random.update(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)
    config.data.update(name="scifact", sources=("beir:scifact", "wikispeedia"))
    config.train.update(batch_size=64, num_steps=2000, pad_to_multiple_of=16, log_every_steps=50,
                        checkpoint_every_steps=500)
    # From scratch: a larger step than fine-tuning, warm-up over the first 10%.
    config.optim.update(lr=5e-4, warmup_steps=200)
    config.loss.update(queue_size=4096, momentum=0.99)
    config.evals.dev.update(batch_size=64)
  elif variant == "smoke":
    config.model.update(name="random", tokenizer="minilm", normalize="true")
    config.data.update(name="synthetic", sources=("synthetic",))
    config.data.crop.update(chunk_length=32, ratio_min=0.25, ratio_max=0.75)
    config.train.update(batch_size=8, num_steps=6, pad_to_multiple_of=16, log_every_steps=2,
                        checkpoint_every_steps=3, progress=False)
    config.optim.update(lr=1e-3, warmup_steps=1)
    config.loss.update(queue_size=24)  # 3 batches: the ring wraps within the run
    config.evals.dev.update(max_length=32, depth=10, metrics=("ndcg@10", "recall@10"),
                            batch_size=16, progress=False)
  return config
