"""`eval/reproduce.py` with a deliberately broken loss, for tests only.

  SIGN_FLIP=value python tests/sign_flip_reproduce.py --suite=smoke --recipes=dpr --out=DIR

The in-batch softmax loss (DPR's, ANCE's, ...) gets its sign flipped: `SIGN_FLIP=value` negates
it (value and gradient), `SIGN_FLIP=gradient` reports the true value but trains on its negation.
"""

import os
import pathlib
import runpy
import sys

import jax

from retrieval_jax import losses

REPO = pathlib.Path(__file__).resolve().parents[1]
_ORIGINAL = losses.in_batch_softmax_loss


def _flipped(*args, **kwargs):
  loss, metrics = _ORIGINAL(*args, **kwargs)
  if os.environ["SIGN_FLIP"] == "gradient":
    return jax.lax.stop_gradient(2 * loss) - loss, metrics
  return -loss, metrics


if __name__ == "__main__":
  if os.environ.get("SIGN_FLIP") not in ("value", "gradient"):
    sys.exit("error: set SIGN_FLIP=value or SIGN_FLIP=gradient")
  losses.in_batch_softmax_loss = _flipped
  sys.path.insert(0, str(REPO / "eval"))
  sys.argv = [str(REPO / "eval" / "reproduce.py"), *sys.argv[1:]]
  runpy.run_path(sys.argv[0], run_name="__main__")
