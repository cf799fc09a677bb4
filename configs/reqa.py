r"""ReQA SQuAD fine-tuning as Chang et al. 2020 measure their pre-training tasks (Table 3).

Two towers (the model of `configs/chang.py`) are fine-tuned on the question -> answer-sentence
pairs of a seeded `data.train_fraction` (0.01, 0.05 or 0.8) of the SQuAD v1.1 train articles,
then ranked on ReQA (`reqa` evaluator: every sentence of every paragraph a candidate, read with
its paragraph; Recall@1/5/10/50/100 and MRR) for the held-back questions. `--config.init` names
the pre-training run to start from (default: random initialisation, the "no pre-training" row):

  python main.py --config=configs/reqa.py --config.init=gs://bucket/chang_mix \
      --config.data.train_fraction=0.01 --workdir=gs://bucket/reqa_mix_1
  python main.py --config=configs/reqa.py:cpu --config.init=runs/chang_mix_cpu \
      --config.data.train_fraction=0.05 --workdir=runs/reqa_mix_5
  python eval/reqa.py --model=runs/reqa_mix_5 --squad=squad --out=runs/reqa_mix_5/full

Settings: the paper's default is batch 512, Adam lr 5e-5, 2,000 steps, queries 64 and
documents 288 tokens, evaluated on the held-back questions against every candidate of the
file. The article split is nested (1% ⊂ 5% ⊂ 80% for one `data.split_seed`).

Variants:
  ``        the paper's setting (BERT-base-sized towers of `configs/chang.py`).
  `cpu`     the `configs/chang.py:*_cpu` towers (2 layers, width 256, 512-d, mean pooling,
            cosine / 0.05), batch 64, lr 1e-4,
            10 epochs of the train questions capped at 300 steps (1%: 100 steps). All
            fractions are evaluated on the same questions: those of the articles the 80% split
            holds back (held back by every fraction), against the candidates of those articles
            (`evals.reqa.data.candidates=test`, about 18k of 92k: what 2 cores encode in a
            minute or two). `--config.evals.reqa.data.candidates=all` ranks against all.
  `bow_cpu` the BoW-MLP baseline with `cpu`'s training (token embeddings 256, one hidden layer
            of 1024 with tanh, 512-d output; `configs/chang.py:bow_mix_cpu` pre-trains it).
  `smoke`   a tiny random tower on a synthetic SQuAD file: seconds.
"""

import ml_collections

from configs import chang, common

VARIANTS = ("default", "cpu", "bow_cpu", "smoke")


def get_config(arg: str = ""):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}; use one of {VARIANTS[1:]} or ''")
  config = common.training_config()
  config.recipe = "reqa"
  # A `chang` (or `reqa`) run whose latest parameters start this one; None: random.
  config.init = ml_collections.FieldReference(None, field_type=str)
  chang.paper_model(config.model)
  config.data.update(name="squad", squad="squad", split="train", train_fraction=0.8,
                     split_seed=0)
  config.train.update(batch_size=512, num_epochs=None, num_steps=2000, query_max_length=64,
                      passage_max_length=288, checkpoint_every_steps=500, log_every_steps=50)
  config.train.max_steps = ml_collections.FieldReference(None, field_type=int)
  config.optim.update(name="adamw", lr=5e-5, warmup_ratio=0.1, decay="linear", weight_decay=0.0)
  config.loss.update(scale=1.0, symmetric=False, in_batch=True)
  config.negatives = {"num": 0}
  reqa = common.reqa_eval()
  # The evaluator follows the run's data and lengths unless overridden on its own.
  for node, key, ref in ((reqa.data, "path", config.data.get_ref("squad")),
                         (reqa.data, "train_fraction", config.data.get_ref("train_fraction")),
                         (reqa.data, "seed", config.data.get_ref("split_seed")),
                         (reqa, "max_length", config.train.get_ref("passage_max_length")),
                         (reqa, "query_max_length", config.train.get_ref("query_max_length"))):
    del node[key]
    node[key] = ref
  config.evals = {"reqa": reqa}

  if variant in ("cpu", "bow_cpu"):
    chang.cpu_model(config.model)
    config.train.update(batch_size=64, num_steps=None, num_epochs=10, query_max_length=32,
                        passage_max_length=128, pad_to_multiple_of=16,
                        checkpoint_every_steps=250, log_every_steps=25)
    config.train.max_steps = 300
    config.optim.update(lr=1e-4)
    config.loss.scale = 20.0  # the towers' cosine / 0.05, as they were pre-trained
    # One test set for every fraction: unlinked from data.train_fraction.
    del config.evals.reqa.data["train_fraction"]
    config.evals.reqa.data.train_fraction = 0.8
    config.evals.reqa.data.candidates = "test"
    config.evals.reqa.update(batch_size=256)
    if variant == "bow_cpu":
      chang.bow_cpu_model(config.model)
  elif variant == "smoke":
    config.model.update(name="random", tokenizer="minilm", projection_dim=16)
    config.model.random.update(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    config.data.update(squad="synthetic", train_fraction=0.5)
    config.train.update(batch_size=8, num_steps=4, query_max_length=16, passage_max_length=48,
                        pad_to_multiple_of=16, checkpoint_every_steps=2, log_every_steps=1,
                        progress=False)
    config.optim.update(lr=1e-3, warmup_ratio=None, warmup_steps=1)
    config.evals.reqa.update(batch_size=16, progress=False)
  return config
