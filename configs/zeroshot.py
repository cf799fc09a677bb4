r"""Zero-shot evaluation of a pretrained encoder (no training) on a BEIR data set.

The baseline every recipe is measured against: e.g. the packaged all-MiniLM-L6-v2
(sentence-transformers; mean pooling, L2-normalised) on the SciFact dev split. An
evaluation-only recipe: it runs `config.evals` (default mode or `--mode=eval`) and has
nothing to train.

  python main.py --config=configs/zeroshot.py --workdir=/tmp/zeroshot
  python main.py --config=configs/zeroshot.py:bm25 --workdir=/tmp/bm25
  python main.py --config=configs/zeroshot.py --config.evals.dev.index=scann --workdir=/tmp/z

Variants after the colon: `` (default: dense, exact search), `bm25` (lexical baseline),
`scann` (ScaNN, with its top-10 overlap against exact search), `smoke` (a tiny corpus, seconds).
"""

from configs import common


def get_config(arg: str = ""):
  config = common.base_config()
  config.recipe = "zeroshot"
  variant = arg or "default"
  if variant == "bm25":
    config.evals.dev.index = "bm25"
  elif variant == "scann":
    config.evals.dev.index = "scann"
    config.evals.dev.check_exact = True
  elif variant == "smoke":
    config.evals.dev.max_length = 32
    config.evals.dev.depth = 10
    config.evals.dev.metrics = ("ndcg@10", "recall@10")
  elif variant != "default":
    raise ValueError(f"unknown variant {arg!r}; use one of '', 'bm25', 'scann', 'smoke'")
  return config
