r"""TCT-ColBERT: Lin, Yang & Lin 2021, *In-Batch Negatives for Knowledge Distillation with
Tightly-Coupled Teachers for Dense Retrieval* (RepL4NLP 2021; first version arXiv 2010.11386).

A frozen ColBERT teacher scores every (query, passage) pair of the global batch with MaxSim;
a single-vector student (mean of its token states after the `[CLS] [Q]` / `[CLS] [D]` prefix,
dot product) learns KL(softmax(teacher / 0.25) || softmax(student)) over all of them. Queries
are `[CLS] [Q] q... [MASK]...` padded to 36 tokens and fully attended; passages `[CLS] [D] d...`
(no [SEP]), as castorini's released students read them (pyserini's TctColBert encoders). The
paper: batch 96, lr 7e-6, 10k warm-up steps, gradient clipping 1.0, query 32 / passage 150
tokens after the prefix, MS MARCO triples (BM25 negatives).

  python main.py --config=configs/tct_colbert.py --workdir=/tmp/tct
  python main.py --config=configs/tct_colbert.py:cpu --config.teacher.name=runs/colbert_cpu \
      --workdir=runs/tct_cpu                                               # ~15 min
  python main.py --config=configs/tct_colbert.py:hn --workdir=runs/tct_hn_only
  python main.py --config=configs/tct_colbert.py:smoke --workdir=/tmp/tct_smoke  # seconds
  python eval/retrieval.py --model=runs/tct_cpu --data=scifact --split=dev

`teacher.name` is a ColBERT training workdir, a ColBERT directory (stanford or PyLate layout)
or a hub id (`colbert-ir/colbertv2.0`); the teacher is loaded on every start, never trained,
never saved in checkpoints (its SHA-256 is, and a resume with another teacher is refused).
The teacher and the student must share a vocabulary. Variants:
  `` (default)  the paper's recipe: bert-base-uncased student, colbertv2.0 teacher, BEIR MS MARCO
                train with BM25 negatives; 100k steps here (set train.num_steps).
  `hn`          no teacher: the student on hard negatives mined once at the start by its own
                index (ANCE's miner, top 200), in-batch cross-entropy. The paper starts from
                the distilled student: --config.model.name=<tct workdir>/export/encoder.
  `tct_hn`      those hard negatives with the in-batch KD (the teacher scores them too).
  `tct_hn_plus` `tct_hn` whose teacher was first fine-tuned on those negatives:
                python main.py --config=configs/colbert.py:cpu --workdir=runs/colbert_hn \
                    --config.negatives.source=pool --config.negatives.pool_from=runs/tct_hn
                then --config.teacher.name=runs/colbert_hn.
  `cpu`         teacher: a `colbert.py:cpu` workdir (`--config.teacher.name`); student: the
                packaged all-MiniLM-L6-v2 (normalised, logits cosine / 0.05) on SciFact train
                minus dev with BM25 negatives, the seed, batch and steps of `dpr.py:cpu`.
                `cpu_hn` and `cpu_tct_hn`: the HN variants at that scale. MiniLM never
                saw TCT's format: read in it at step 0 it scores 0.20 nDCG@10 below its
                own format on SciFact dev, which 76 steps do not fully recover
                (WORKSPACE, "ColBERT and TCT-ColBERT").
  `smoke`       a tiny random student and a random teacher on synthetic data: seconds.
"""

import ml_collections

from configs import ance, common

VARIANTS = ("default", "hn", "tct_hn", "tct_hn_plus", "cpu", "cpu_hn", "cpu_tct_hn",
            "cpu_tct_hn_plus", "smoke")


def teacher_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      # A ColBERT training workdir, ColBERT directory or hub id; `random` for smoke runs.
      "name": "colbert-ir/colbertv2.0",
      "step": ml_collections.FieldReference(None, field_type=int),  # workdir: its checkpoint
      # None: the teacher's own document length.
      "doc_max_length": ml_collections.FieldReference(None, field_type=int),
      # teacher.name=random: a seeded random ColBERT of this shape (tests, smoke runs).
      "random": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64},
      "random_dim": 16,
      "seed": 1,
  })


def _hard_negatives(config, cpu: bool):
  """Negatives mined once, before step 1, by the student's own index (ANCE's miner)."""
  config.negatives = ance.ann_negatives()
  config.negatives.update(refresh_every=0, mine_at_start=True, first_refresh=None,
                          refresh_mode="sync")
  if cpu:
    config.negatives.update(bm25_depth=30, encode_batch_size=32)


def get_config(arg: str = ""):
  config = common.training_config()
  config.recipe = "tct_colbert"
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}; use one of {VARIANTS[1:]} or ''")

  config.model.update(name="bert-base-uncased", pooling="mean", normalize="false",
                      shared_towers=True)
  config.model.pooling_skip_first = 4  # [CLS] [ Q ] (BERT's tokenizer splits "[Q]" into three)
  config.teacher = teacher_config()
  config.data.update(name="msmarco", train_split="train")
  config.negatives = dict(source="bm25", num=1, depth=30, top_k=None, k1=0.9, b=0.4)
  # The student's lengths, prefix included: 4 + 32 and 4 + 150.
  config.train.update(batch_size=96, num_epochs=None, num_steps=100_000, query_max_length=36,
                      passage_max_length=154, checkpoint_every_steps=5000)
  config.optim.update(lr=7e-6, warmup_steps=10_000, warmup_ratio=None, max_grad_norm=1.0)
  config.loss = dict(type="kd", temperature=0.25, ce_weight=0.0, scale=1.0, symmetric=False,
                     in_batch=True, grad_cache=False, chunk_size=32)
  config.evals.dev.update(max_length=154, query_max_length=36)

  cpu = variant.startswith("cpu")
  if cpu:
    config.teacher.name = ""  # required: --config.teacher.name=<a colbert.py:cpu workdir>
    config.model.update(name="minilm", normalize="true")
    config.data.update(name="scifact", train_split="train_minus_dev")
    config.train.update(batch_size=32, num_epochs=4, num_steps=None, pad_to_multiple_of=16,
                        log_every_steps=5, checkpoint_every_steps=20)
    config.optim.update(lr=2e-5, warmup_steps=None, warmup_ratio=0.1)
    config.loss.update(scale=20.0)  # the student's cosine / 0.05, as dpr.py:cpu
    config.evals.dev.update(batch_size=32)
  if variant.endswith(("hn", "hn_plus")):
    _hard_negatives(config, cpu)
  if variant in ("hn", "cpu_hn"):
    config.loss.update(type="ce")
  if variant.endswith("hn_plus") and not cpu:
    config.teacher.name = ""  # required: the ColBERT workdir fine-tuned on those negatives
  if variant == "smoke":
    config.model.update(name="random", tokenizer="minilm")
    config.teacher.name = "random"
    config.data.update(name="synthetic", train_split="train_minus_dev")
    config.negatives.update(depth=8)
    config.train.update(batch_size=8, num_steps=6, query_max_length=20, passage_max_length=36,
                        pad_to_multiple_of=16, log_every_steps=2, checkpoint_every_steps=3,
                        progress=False)
    config.optim.update(lr=1e-3, warmup_steps=1)
    config.evals.dev.update(max_length=36, query_max_length=20, depth=10,
                            metrics=("ndcg@10", "recall@10"), batch_size=16, progress=False)
  return config
