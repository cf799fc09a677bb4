"""Mixed precision: bfloat16 compute with float32 master weights trains like float32.

`model.dtype=bfloat16` (the accelerator setting) runs the encoder's matmuls and activations in
bfloat16 while `param_dtype` stays float32: parameters, gradients and the optimizer's moments
are float32, and the loss (logits, softmax, log-sum-exp) is computed in float32. Same
initial weights, same batches, same dropout masks: the two runs' losses must agree step by
step and their parameter updates must point the same way.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from retrieval_jax import optim, sharding
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.encoder import TextEncoder, init_params
from retrieval_jax.models.pooling import PoolingConfig
from retrieval_jax.recipes import dual_encoder

_TINY = EncoderConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=4,
                      intermediate_size=128, max_position_embeddings=64)
_LOSS = ml_collections.ConfigDict(dict(scale=1.0, symmetric=False, grad_cache=False,
                                       chunk_size=8))


def _batches(steps, batch=8, group=2, lq=12, lp=24, vocab=_TINY.vocab_size):
  rng = np.random.default_rng(0)

  def ids_and_mask(shape, length):
    ids = rng.integers(1, vocab, shape + (length,)).astype(np.int32)
    mask = (np.arange(length) < rng.integers(3, length + 1, shape)[..., None]).astype(np.int32)
    return ids * mask, mask

  out = []
  for _ in range(steps):
    q_ids, q_mask = ids_and_mask((batch,), lq)
    p_ids, p_mask = ids_and_mask((batch, group), lp)
    p_ids[:, 0, :lq] = q_ids  # Positives share their query's tokens: a task the model learns.
    p_mask[:, 0, :lq] = np.maximum(p_mask[:, 0, :lq], q_mask)
    out.append(dict(query_input_ids=q_ids, query_attention_mask=q_mask,
                    passage_input_ids=p_ids, passage_attention_mask=p_mask))
  return out


def _train(config, pooling, loss_config, tower, batches, lr):
  """Losses per step, and the final params and optimizer state (host)."""
  dual = dual_encoder.DualEncoder(TextEncoder(config, pooling), shared=True)
  tx = optim.make_optimizer(lr, total_steps=100, warmup_steps=0, weight_decay=0.01,
                            max_grad_norm=1.0)
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  shardings = dual_encoder.state_shardings(dual, tx, mesh)
  state = dual_encoder.init_state(dual, tx, tower, seed=0, shardings=shardings)
  step = jax.jit(functools.partial(dual_encoder.train_step, dual=dual, tx=tx,
                                   schedule=optim.make_schedule(lr, 100),
                                   loss_config=loss_config))
  losses = []
  for batch in batches:
    state, metrics = step(state, {}, batch)
    losses.append(float(metrics["loss"]))
  host = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)
  return losses, host(state["params"]), host(state["opt_state"])


def _leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def _update_cosine(initial, a, b):
  """Cosine between the two runs' total parameter updates (all leaves as one vector)."""
  da = np.concatenate([(x - i).ravel() for x, i in zip(_leaves(a), _leaves(initial))])
  db = np.concatenate([(x - i).ravel() for x, i in zip(_leaves(b), _leaves(initial))])
  return float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db)))


def _compare(config, tower, batches, lr, pooling=PoolingConfig(mode="mean"), loss_config=_LOSS):
  runs = {dtype: _train(dataclasses.replace(config, dtype=dtype), pooling, loss_config, tower,
                        batches, lr)
          for dtype in (jnp.float32, jnp.bfloat16)}
  (loss32, params32, _), (loss16, params16, opt16) = runs[jnp.float32], runs[jnp.bfloat16]
  # Master weights and the moments (running averages of the gradients) stay float32.
  for tree in (params16, opt16):
    assert {x.dtype for x in _leaves(tree) if x.dtype.kind == "f"} == {np.dtype(np.float32)}
  return loss32, loss16, _update_cosine({"shared": tower}, params32, params16)


def test_bfloat16_compute_tiny_model_trains_like_float32():
  tower = jax.tree_util.tree_map(np.asarray,
                                 nn.meta.unbox(init_params(TextEncoder(_TINY, PoolingConfig(
                                     mode="mean")), jax.random.PRNGKey(0))))
  loss32, loss16, cosine = _compare(_TINY, tower, _batches(4), lr=1e-3)
  print(f"[measured] tiny BERT, 4 AdamW steps: float32 losses {np.round(loss32, 4)}, "
        f"bfloat16 compute {np.round(loss16, 4)}, update cosine {cosine:.4f}")
  assert loss16 != loss32  # bfloat16 really ran: the losses differ by its rounding
  np.testing.assert_allclose(loss16, loss32, rtol=0.02)
  assert loss32[-1] < loss32[0] and loss16[-1] < loss16[0]
  assert cosine > 0.95


@pytest.mark.slow
def test_bfloat16_compute_minilm_trains_like_float32():
  """The packaged MiniLM, bench_train's objective (mean pooling + L2, scale 20, dropout 0.1)."""
  from eval import bench_train  # pylint: disable=g-import-not-at-top
  from retrieval_jax.data import tokenize  # pylint: disable=g-import-not-at-top

  spec = dual_encoder.model_spec(bench_train._model_config("minilm"))  # pylint: disable=protected-access
  split, _ = bench_train.load_split(None)  # SciFact when present, else the synthetic set.
  batcher, _ = bench_train.make_batcher(split, tokenize.load_tokenizer(spec.tokenizer_dir),
                                        batch_size=8, query_max_length=32,
                                        passage_max_length=64, seed=0)
  keys = ("query_input_ids", "query_attention_mask", "passage_input_ids",
          "passage_attention_mask")
  batches = [{key: batcher.batch(step)[key] for key in keys} for step in range(4)]
  loss_config = ml_collections.ConfigDict(dict(_LOSS.to_dict(), scale=bench_train.SCALE))
  loss32, loss16, cosine = _compare(spec.encoder, dual_encoder.initial_tower_params(spec, 0),
                                    batches, lr=2e-5, pooling=spec.pooling,
                                    loss_config=loss_config)
  print(f"[measured] MiniLM, 4 AdamW steps (batch 8, dropout on): float32 losses "
        f"{np.round(loss32, 4)}, bfloat16 compute {np.round(loss16, 4)}, update cosine "
        f"{cosine:.4f}")
  np.testing.assert_allclose(loss16, loss32, rtol=0.02)
  assert cosine > 0.9
