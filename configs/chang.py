r"""Chang et al. 2020, *Pre-training Tasks for Embedding-based Large-scale Retrieval*
(ICLR 2020, arXiv 2002.03932): two-tower pre-training on paragraph-level pairs from Wikipedia.

The task is the variant:
  ict    Inverse Cloze Task: a sentence of a passage -> the rest of that passage.
  bfs    Body First Selection: a first-section sentence -> another passage of the same article.
  wlp    Wiki Link Prediction: a first-section sentence of A -> a passage of an article B
         that links to A.
  mix    all three, each pair's task drawn uniformly (the paper's ICT+BFS+WLP).
The paper's setting is the default of each: BERT-base-sized towers trained from random
initialisation (its "no pre-training" baseline is that model fine-tuned directly;
`--config.model.name=bert-base-uncased` starts from BERT, the MLM row), [CLS] through a linear
projection to 512 dims, inner product, softmax over the batch of 8,192 pairs, queries 64 and
documents 288 tokens, Adam lr 1e-4 with 10% warm-up and linear decay, 100k steps, on Wikipedia
articles converted from a dump:

  python -m retrieval_jax.data.wikipedia_dump --dump=enwiki-pages-articles.xml.bz2 \
      --out=/data/wikipedia_articles.jsonl.gz
  python main.py --config=configs/chang.py:mix --workdir=gs://bucket/chang_mix \
      --config.data.articles=jsonl:/data/wikipedia_articles.jsonl.gz
  python main.py --config=configs/reqa.py --config.init=gs://bucket/chang_mix \
      --config.data.train_fraction=0.01 --workdir=gs://bucket/reqa_mix_1

`<task>_cpu` pre-trains a small random Transformer (2 layers, width 256, MiniLM's uncased
vocabulary, the same 512-d projection) on the 4,604 Wikispeedia articles in about 15 minutes
on 2 CPU cores (1,000 steps of batch 64, queries 32 and documents 96 tokens, lr 1e-4);
`bow_mix_cpu` pre-trains the BoW-MLP the same way on the mix. `configs/reqa.py:cpu` and
`bow_cpu` have the same model shapes and fine-tune them. At this scale the towers mean-pool
and compare by cosine / 0.05 (`model.pooling=mean`, `model.normalize=true`,
`loss.scale=20`): with the paper's [CLS] and inner product a random 2-layer tower stayed at
chance (loss ln 64) for 120 steps at lr 1e-4 and 5e-4, with cosine too, while mean pooling
learned (WORKSPACE, "Chang et al."). `smoke` runs a few steps on synthetic articles.

What the paper does not say and this config chooses (switches in `data.*`, `model.*`):
  - one tower shared by queries and documents (`model.shared_towers`);
  - documents are `[CLS] title [SEP] passage [SEP]` (`data.title`), a passage is a paragraph;
  - BFS never pairs a sentence with its own paragraph (`data.bfs_other_passage`);
  - a WLP passage is a paragraph of B that itself links to A (`data.wlp_passage=linking`;
    `any`: any paragraph of B). Wikispeedia has article-level links only: its paragraph
    links are where the target's title occurs in the paragraph (`data.wikispeedia`);
  - the softmax has no sampling correction (in-batch documents are drawn uniformly, so it is
    a constant) and no temperature (`loss.scale=1`); gradients are clipped at norm 1.0.
"""

import ml_collections

from configs import common

TASKS = {"ict": {"ict": 1.0}, "bfs": {"bfs": 1.0}, "wlp": {"wlp": 1.0},
         "mix": {"ict": 1.0, "bfs": 1.0, "wlp": 1.0}}
VARIANTS = ("ict", "bfs", "wlp", "mix", "ict_cpu", "bfs_cpu", "wlp_cpu", "mix_cpu", "bow_mix_cpu",
            "smoke")


def cpu_model(model):
  """The `cpu` Transformer (shared with configs/reqa.py, whose `init` loads it): mean pooling
  and cosine similarity (see the module docstring for why)."""
  model.update(name="random", tokenizer="minilm", pooling="mean", normalize="true",
               projection_dim=512, shared_towers=True, dropout=0.1)
  model.random.update(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=1024)


def bow_cpu_model(model):
  """The `cpu` BoW-MLP: token embeddings 256, one hidden layer of 1024 (tanh), 512-d output."""
  model.update(type="bow_mlp", name="random", tokenizer="minilm", pooling="auto",
               normalize="true", projection_dim=None, shared_towers=True, dropout=0.1)
  model.bow.update(embed_dim=256, hidden_widths=(1024,), activation="tanh", output_dim=512)


def paper_model(model):
  """BERT-base-sized towers from random initialisation with a 512-d projection."""
  model.update(name="random", tokenizer="bert-base-uncased", pooling="cls", normalize="false",
               projection_dim=512, shared_towers=True, dropout=0.1)
  model.random.update(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)


def get_config(arg: str = ""):
  variant = arg or "mix"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}; use one of {VARIANTS}")
  config = common.training_config()
  config.recipe = "chang"
  # A run of this recipe (or of reqa) whose latest parameters start this one; None: random.
  config.init = ml_collections.FieldReference(None, field_type=str)
  task = "mix" if variant in ("smoke", "bow_mix_cpu") else variant.split("_")[0]
  paper_model(config.model)
  config.data.update(name="squad", articles="jsonl:wikipedia_articles.jsonl.gz",
                     tasks=dict(TASKS[task]), title=True, bfs_other_passage=True,
                     wlp_passage="linking", splitter="blingfire")
  config.train.update(batch_size=8192, num_epochs=None, num_steps=100_000,
                      query_max_length=64, passage_max_length=288,
                      checkpoint_every_steps=5000, log_every_steps=100)
  config.optim.update(name="adamw", lr=1e-4, warmup_ratio=0.1, decay="linear", weight_decay=0.0)
  config.loss.update(scale=1.0, symmetric=False, in_batch=True)
  config.negatives = {"num": 0}
  config.evals = {}
  if variant.endswith("_cpu"):
    (bow_cpu_model if variant == "bow_mix_cpu" else cpu_model)(config.model)
    config.data.articles = "wikispeedia"
    config.train.update(batch_size=64, num_steps=1000, query_max_length=32,
                        passage_max_length=96, pad_to_multiple_of=16,
                        checkpoint_every_steps=200, log_every_steps=50)
    config.loss.scale = 20.0  # cosine similarity / temperature 0.05
  elif variant == "smoke":
    config.model.update(name="random", tokenizer="minilm", pooling="cls", normalize="false",
                        projection_dim=16, shared_towers=True)
    config.model.random.update(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    config.data.articles = "synthetic"
    config.train.update(batch_size=8, num_steps=4, query_max_length=16, passage_max_length=48,
                        pad_to_multiple_of=16, checkpoint_every_steps=2, log_every_steps=1,
                        progress=False)
    config.optim.update(lr=1e-3, warmup_ratio=None, warmup_steps=1)
  return config
