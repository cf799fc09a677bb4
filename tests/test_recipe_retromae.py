"""RetroMAE on `configs/retromae.py:smoke` (a tiny random encoder, the synthetic corpus).

Covers so far: the smoke run trains the encoder, its MLM head and the decoder, evaluates,
exports the encoder as a *ForMaskedLM directory and the decoder; invalid keys are refused
before compiling.
"""

import pathlib
import sys

import numpy as np
import pytest
import transformers

from retrieval_jax import train

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import retromae as retromae_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import assert_rejected_before_compiling, with_overrides  # pylint: disable=wrong-import-position


def _smoke(**overrides):
  return with_overrides(retromae_config.get_config("smoke"), overrides)


def test_config_follows_the_released_recipe():
  assert "Xiao" in retromae_config.__doc__
  paper = retromae_config.get_config()
  assert (paper.data.masking.encoder_ratio, paper.data.masking.decoder_ratio) == (0.3, 0.5)
  assert (paper.data.max_length, paper.train.batch_size, paper.train.num_epochs) == (512, 256, 8)
  assert (paper.optim.lr, paper.optim.warmup_ratio, paper.optim.weight_decay) == (1e-4, 0.1, 0.01)
  assert paper.model.mlm_head and paper.model.pooling == "cls"


def test_smoke_run_trains_evaluates_and_exports(tmp_path):
  result = train.train(_smoke(), tmp_path)
  assert result.step == 6 and 0.0 <= result.eval_metrics["dev/ndcg@10"] <= 1.0
  metrics = result.train_metrics
  assert metrics["loss"] == pytest.approx(metrics["encoder_loss"] + metrics["decoder_loss"],
                                          rel=1e-5)
  assert set(result.state["params"]) == {"shared", "decoder"}
  assert "mlm_head" in result.state["params"]["shared"]
  encoder = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "export" / "encoder")
  assert type(encoder).__name__ == "BertForMaskedLM"
  decoder = np.load(tmp_path / "export" / "decoder" / "params.npz")
  assert any(name.endswith("query/kernel") for name in decoder.files)


@pytest.mark.parametrize("overrides, key", [
    ({"model.mlm_head": False}, "model.mlm_head"),
    ({"data.max_length": 1024}, "data.max_length"),
    ({"data.masking.encoder_ratio": 1.5}, "data.masking.encoder_ratio"),
    ({"data.sources": ()}, "data.sources"),
])
def test_invalid_config_fails_before_compiling(tmp_path, monkeypatch, overrides, key):
  assert_rejected_before_compiling(_smoke(**overrides), tmp_path, key, monkeypatch)
