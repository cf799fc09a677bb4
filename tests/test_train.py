"""The training loop end to end on `configs/dpr.py:smoke` (tiny random encoder, synthetic data).

Covers: train_and_eval writes checkpoints, TensorBoard events, dev metrics and an export that
loads back; resume (N steps, stop, resume to 2N) equals an uninterrupted 2N run; a non-finite
loss stops the run and the newest checkpoint is the last good one; invalid configs fail before
compiling, naming their key; `--mode=eval` and `eval/retrieval.py --model=<workdir>` evaluate a
checkpoint without resolving the base model; a SIGTERM saves the current step on a gs://
workdir and the resumed run equals an uninterrupted one; a resume with a changed config is
refused (in process and from `main.py`). Slow: a checkpoint resumes on a different mesh
shape; GradCache trains like the full batch.
"""

import dataclasses
import json
import os
import pathlib
import signal
import sys

import jax
import numpy as np
import pytest

from retrieval_jax import checkpoint, metric_writer, preemption, run_config, train
from retrieval_jax.models import hf
from retrieval_jax.recipes import base
from retrieval_jax.recipes import dpr as dpr_recipe

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from configs import dpr  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import (  # pylint: disable=wrong-import-position
    restore_towers,
    assert_rejected_before_compiling, run_python, with_overrides)


def _smoke(**overrides):
  """`configs/dpr.py:smoke` with mean pooling and cosine at scale 20: the random model's CLS
  vectors are nearly equal for every text, so with `cls` six steps cannot move the loss
  (test_smoke_config_trains)."""
  learnable = {"model.pooling": "mean", "model.normalize": "true", "loss.scale": 20.0}
  return with_overrides(dpr.get_config("smoke"), {**learnable, **overrides})


def _final_params(workdir):
  config = run_config.load_config(workdir)
  query, passage, step = restore_towers(config, workdir)
  return step, jax.tree_util.tree_map(np.asarray, (query.params, passage.params))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("smoke")
  summary = train.run(_smoke(**{"train.eval_every_steps": 3}), workdir, "train_and_eval")
  return workdir, summary


def test_train_and_eval_writes_everything(smoke_run):
  workdir, summary = smoke_run
  assert summary["step"] == 6 and not summary["stopped_early"]
  assert set(summary["eval"]) == {"dev/ndcg@10", "dev/recall@10"}
  assert 0.0 <= summary["eval"]["dev/ndcg@10"] <= 1.0
  assert np.isfinite(summary["train"]["loss"])
  assert (workdir / "config.json").exists()
  assert checkpoint.Checkpointer(workdir).all_steps() == [3, 6]
  scalars = metric_writer.read_scalars(workdir / "tensorboard")
  for tag in ("train/loss", "train/lr", "train/accuracy", "train/examples_per_s",
              "train/steps_per_s", "dev/ndcg@10"):
    assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
  # Every log interval (2), checkpoint (3) and the first step.
  assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4, 6]
  # Periodic evaluation at step 3, the final one at 6.
  assert [step for step, _ in scalars["dev/ndcg@10"]] == [3, 6]
  assert (workdir / "eval" / "step_3" / "dev" / "metrics.json").exists()
  metrics = json.loads((workdir / "eval" / "step_6" / "dev" / "metrics.json").read_text())
  assert metrics["ndcg@10"] == pytest.approx(summary["eval"]["dev/ndcg@10"])
  assert (workdir / "eval" / "step_6" / "dev" / "run.trec").exists()


def test_export_loads_and_matches_the_checkpoint(smoke_run):
  from retrieval_jax import encode  # pylint: disable=g-import-not-at-top

  workdir, _ = smoke_run
  _, (query_params, passage_params) = _final_params(workdir)
  for name, params in (("query_encoder", query_params), ("passage_encoder", passage_params)):
    loaded = encode.load_encoder(workdir / "export" / name)
    diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                                   loaded.params, params)
    assert max(jax.tree_util.tree_leaves(diffs)) == 0.0
  # The two towers were trained apart (DPR): they differ.
  assert not np.allclose(query_params["backbone"]["embeddings"]["word_embeddings"]["embedding"],
                         passage_params["backbone"]["embeddings"]["word_embeddings"]["embedding"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The final params of an uninterrupted smoke run (6 steps)."""
  return _final_params(_run(tmp_path_factory.mktemp("straight"), _smoke()))[1]


def _max_abs_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_resume_equals_uninterrupted(tmp_path, straight):
  interrupted = tmp_path / "interrupted"
  first = train.run(_smoke(**{"train.stop_at_step": 3}), interrupted, "train")
  assert first["stopped_early"] and first["step"] == 3
  second = train.run(_smoke(), interrupted, "train")
  assert second["step"] == 6 and not second["stopped_early"]
  step, resumed = _final_params(interrupted)
  assert step == 6
  worst = _max_abs_difference(resumed, straight)
  print(f"[measured] resume 3 -> 6 vs straight 6 steps: params max abs diff {worst:.1e}")
  assert worst <= 1e-6


class _SigtermAt(base.Hook):
  """Sends this process a real SIGTERM after `step`, as a scheduler's preemption notice."""

  def __init__(self, step):
    self.step = step

  def after_step(self, step, state):
    if step == self.step:
      os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_on_a_gcs_workdir_saves_the_step_and_the_resumed_run_equals_uninterrupted(
    smoke_run, straight, gcs_server, gcs_bucket, tmp_path, monkeypatch):
  """`gs://bucket/run` end to end, in process: a real SIGTERM after step 2 saves step 2 to the
  bucket; a changed lr is refused; the resumed run (a safe change: logging) trains to 6 equal
  to the local uninterrupted run, evaluates like it, and its events read back from the bucket."""
  build = dpr_recipe.build

  def build_with_notice(*args, **kwargs):
    recipe = build(*args, **kwargs)
    return dataclasses.replace(recipe, hooks=[*recipe.hooks, _SigtermAt(2)])

  monkeypatch.chdir(tmp_path)  # a path mangled into a local "gs:" directory would show here
  workdir = f"{gcs_bucket}/run"
  with monkeypatch.context() as patch:
    patch.setattr(dpr_recipe, "build", build_with_notice)
    with pytest.raises(preemption.Preempted) as stopped:
      train.run(_smoke(), workdir, "train")
  assert stopped.value.step == 2  # no step lost, none trained after the notice
  assert checkpoint.Checkpointer(workdir).all_steps() == [2]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed
  print(f"[measured] SIGTERM at step 2 (gs://): checkpoint saved in "
        f"{stopped.value.save_seconds:.2f} s")

  with pytest.raises(run_config.ConfigChangedError, match=r"optim\.lr: 0\.001 -> 0\.002"):
    train.run(_smoke(**{"optim.lr": 2e-3}), workdir, "train")
  summary = train.run(_smoke(**{"train.log_every_steps": 1}), workdir, "train_and_eval")
  assert summary["step"] == 6
  worst = _max_abs_difference(_final_params(workdir)[1], straight)
  print(f"[measured] preempted at 2, resumed to 6 vs straight: params max abs diff {worst:.1e}")
  assert worst <= 1e-6
  _, local = smoke_run
  assert summary["eval"] == pytest.approx(local["eval"], abs=1e-6)
  scalars = metric_writer.read_scalars(f"{workdir}/tensorboard")
  assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
  assert "dev/ndcg@10" in scalars and "train/preemption_save_s" in scalars
  objects = set(gcs_server.list_objects(gcs_bucket[len("gs://"):]))
  for name in ("run/config.json", "run/tensorboard/metrics.jsonl",
               "run/negatives/bm25_train_minus_dev.npz", "run/model/retrieval_jax_model.json",
               "run/model/tokenizer/tokenizer.json",
               "run/eval/step_6/dev/metrics.json", "run/eval/step_6/dev/run.trec",
               "run/export/query_encoder/model.safetensors",
               "run/export/passage_encoder/config_sentence_transformers.json"):
    assert name in objects, sorted(objects)
  assert len([n for n in objects if n.startswith("run/tensorboard/events.out.tfevents.")]) == 2
  assert not list(tmp_path.iterdir())  # nothing was written locally


def _run(workdir, config, mode="train"):
  train.run(config, workdir, mode)
  return workdir


@pytest.mark.slow  # the restore onto another mesh is tested in test_checkpoint.py; end to end here
def test_resume_on_a_different_mesh(tmp_path):
  workdir = tmp_path / "mesh"
  train.run(_smoke(**{"train.stop_at_step": 3, "mesh.data": 4, "mesh.model": 2}), workdir,
            "train")
  summary = train.run(_smoke(**{"mesh.data": 8, "mesh.model": 1}), workdir, "train")
  assert summary["step"] == 6


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _smoke(**{"optim.lr": 1e30, "optim.max_grad_norm": 0.0,
                     "train.checkpoint_every_steps": 1, "train.async_checkpoints": False})
  with pytest.raises(train.NonFiniteLossError, match=r"non-finite .* step \d+.*last good "
                     r"checkpoint is step \d+"):
    train.run(config, tmp_path, "train")
  ckpt = checkpoint.Checkpointer(tmp_path)
  steps = ckpt.all_steps()
  assert steps, "no good checkpoint was kept"
  _, params = _final_params(tmp_path)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("overrides, key", [
    ({"train.batch_size": 12}, "train.batch_size"),   # not divisible by the 8-way data axis
    ({"mesh.model": 3}, "mesh.model"),                 # does not divide the 8 devices
    ({"mesh.data": 1, "mesh.model": 8}, "mesh.model"),  # does not divide the 4 heads
    ({"data.name": "/no/such/beir/dir"}, "data.name"),
    ({"loss.grad_cache": True, "loss.chunk_size": 3}, "loss.chunk_size"),
    ({"train.passage_max_length": 4096}, "train.passage_max_length"),
    ({"optim.lr": None}, "optim.lr"),
    ({"train.num_steps": None, "train.num_epochs": 0}, "train.num_epochs"),
])
def test_invalid_config_fails_before_compiling(tmp_path, monkeypatch, overrides, key):
  assert_rejected_before_compiling(_smoke(**overrides), tmp_path, key, monkeypatch)


@pytest.mark.slow  # GradCache = full-batch gradients is tested in test_grad_cache.py
def test_grad_cache_run_matches_plain_run(tmp_path):
  """The whole loop with GradCache gives the same parameters as without (dropout off).

  Adam's eps is raised to 1e-3 so that rounding-level gradients (~1e-8, e.g. on the attention
  key bias, whose true gradient is 0) are not normalised into +-lr updates, which would make
  the comparison measure Adam's amplification of noise rather than GradCache.
  """
  base = {"model.dropout": 0.0, "train.num_steps": 2, "optim.eps": 1e-3}
  _, plain = _final_params(_run(tmp_path / "plain", _smoke(**base)))
  _, cached = _final_params(_run(tmp_path / "cache", _smoke(
      **base, **{"loss.grad_cache": True, "loss.chunk_size": 8})))
  worst = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(cached)))
  print(f"[measured] 2 steps with GradCache vs without: params max abs diff {worst:.1e}")
  assert worst <= 1e-5


def test_eval_mode_and_eval_cli_on_a_workdir(smoke_run, tmp_path):
  workdir, summary = smoke_run
  evaluated = train.run(_smoke(), workdir, "eval")
  assert evaluated["step"] == 6
  assert evaluated["eval"]["dev/ndcg@10"] == pytest.approx(summary["eval"]["dev/ndcg@10"], abs=1e-6)
  earlier = train.run(_smoke(), workdir, "eval", step=3)
  assert earlier["step"] == 3

  out = tmp_path / "cli"
  result = run_python(["eval/retrieval.py", f"--model={workdir}", "--data=synthetic",
                       "--split=dev", "--max_length=32", "--metrics=ndcg@10,recall@10",
                       "--depth=10", f"--out={out}", "--step=6", "--noprogress"])
  assert "step 6" in result.stdout
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["ndcg@10"] == pytest.approx(summary["eval"]["dev/ndcg@10"], abs=1e-5)


def test_evaluating_a_workdir_never_resolves_the_base_model(smoke_run, monkeypatch):
  """The spec and tokenizer come from `workdir/model/` (no hub, no packaged model needed)."""
  workdir, summary = smoke_run
  assert (workdir / "model" / "retrieval_jax_model.json").exists()

  def unavailable(name, *args, **kwargs):
    raise AssertionError(f"evaluation resolved {name!r} instead of reading workdir/model")

  monkeypatch.setattr(hf, "resolve_model_dir", unavailable)
  evaluated = train.run(_smoke(), workdir, "eval")
  assert evaluated["eval"] == pytest.approx(summary["eval"], abs=1e-6)


def test_main_trains_with_flag_overrides_and_rejects_unknown_keys(tmp_path):
  workdir = tmp_path / "main"
  command = ["main.py", "--config=configs/dpr.py:smoke", f"--workdir={workdir}",
             "--mode=train", "--config.train.num_steps=2"]
  run_python([*command, "--config.optim.lr=5e-4", "--config.note=lr sweep"])
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["optim"]["lr"] == 5e-4 and saved["train"]["num_steps"] == 2
  assert saved["note"] == "lr sweep"
  assert checkpoint.Checkpointer(workdir).all_steps() == [2]
  # Resuming with another learning rate is refused in one line that names the key...
  changed = run_python([*command, "--config.optim.lr=1e-3"], check=False)
  assert changed.returncode != 0 and "Traceback" not in changed.stderr
  (line,) = [l for l in changed.stderr.splitlines() if l.startswith("error:")]
  assert "optim.lr: 0.0005 -> 0.001" in line and "--allow_config_change" in line
  # ... and accepted knowingly, keeping the old config beside the new one.
  run_python([*command, "--config.optim.lr=1e-3", "--allow_config_change"])
  assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 1e-3
  assert json.loads((workdir / "config.step_2.json").read_text())["optim"]["lr"] == 5e-4
  bad = run_python(["main.py", "--config=configs/dpr.py:smoke",
                    f"--workdir={tmp_path / 'bad'}", "--config.optim.learning_rate=1e-3"],
                   check=False)
  assert bad.returncode != 0 and "learning_rate" in bad.stderr


def _training_pairs_loss(query_encoder, passage_encoder, config) -> float:
  """In-batch softmax loss (dropout off) of every training query against all their positives."""
  from retrieval_jax import encode  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import pairs, synthetic  # pylint: disable=g-import-not-at-top

  dataset = pairs.pairs_from_beir(synthetic.synthetic_beir(config.data.train_split))
  queries = encode.encode_texts(query_encoder, dataset.query_texts,
                                max_length=config.train.query_max_length)
  passages = encode.encode_texts(
      passage_encoder, [dataset.doc_texts[p[0]] for p in dataset.positives],
      max_length=config.train.passage_max_length)
  logits = config.loss.scale * queries.astype(np.float64) @ passages.T.astype(np.float64)
  logits -= logits.max(axis=1, keepdims=True)
  log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return float(-np.mean(np.diag(log_softmax)))


def test_smoke_config_trains(smoke_run):
  """The loop really optimises: over the whole training set (synthetic queries copy their
  document), the in-batch loss without dropout is lower after the 6 steps than at step 0.

  Not the logged per-batch losses: which of two batches scores lower depends on the dropout
  masks.
  """
  from retrieval_jax.recipes import dual_encoder  # pylint: disable=g-import-not-at-top

  workdir, _ = smoke_run
  config = run_config.load_config(workdir)
  query, passage, _ = restore_towers(config, workdir)
  initial = dual_encoder.initial_tower_params(dual_encoder.model_spec(config.model),
                                              config.seed)
  before = _training_pairs_loss(dataclasses.replace(query, params=initial),
                                dataclasses.replace(passage, params=initial), config)
  after = _training_pairs_loss(query, passage, config)
  assert after < before - 0.02, (before, after)


def test_tfds_is_imported_before_the_loop_starts_threads():
  """TFDS's import patches `builtins.__import__` process-wide; `train` imports it first so no
  checkpoint or prefetch thread can be importing meanwhile (WORKSPACE, "Contriever")."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  probe = ("import sys; import retrieval_jax.train; "
           "print('tensorflow_datasets' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=300)
  assert result.stdout.strip().splitlines()[-1] == "True"
