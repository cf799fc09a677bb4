r"""retrieval_jax launcher: one config per paper recipe, overridable from the command line.

  python main.py --config=configs/zeroshot.py --workdir=/tmp/zeroshot --mode=eval
  python main.py --config=configs/zeroshot.py:bm25 --config.data.name=/path/to/beir/dir \
      --workdir=/tmp/bm25 --mode=eval

`--config=FILE[:VARIANT]` loads `get_config(VARIANT)` from FILE; `--config.a.b=value`
overrides one field (an unknown field is an error). Results go to `--workdir`.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results (and checkpoints).")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"],
                          "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  recipe = config.get("recipe", None)
  if recipe == "zeroshot":
    if _MODE.value != "eval":
      raise app.UsageError("recipe 'zeroshot' evaluates a pretrained model and has nothing to "
                           "train: use --mode=eval")
    from retrieval_jax import evaluation  # pylint: disable=g-import-not-at-top

    result = evaluation.evaluate_pretrained(config, workdir)
    print(evaluation.format_table({**result.metrics, **result.extra}))
    logging.info("metrics: %s", json.dumps(result.metrics))
    return
  raise app.UsageError(f"recipe {recipe!r} is not available in this version of retrieval_jax; "
                       "available: zeroshot")


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  app.run(main)
