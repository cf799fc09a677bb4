"""Tests for retrieval_jax.losses: NumPy references, hand-checked cases, edge cases, sharding.

The NumPy references below are written from the definitions (explicit exp/log sums in float64,
loops where that is clearer) and never call the jnp code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from retrieval_jax import losses

# --- NumPy references ----------------------------------------------------------------------------


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  shift = np.max(x, axis=-1, keepdims=True)
  return x - shift - np.log(np.sum(np.exp(x - shift), axis=-1, keepdims=True))


def np_in_batch(query, passage, positive_index, scale=1.0, symmetric=False, mask=None):
  """(loss, accuracy, positive_logit_mean) from the definition, in float64."""
  query, passage = np.asarray(query, np.float64), np.asarray(passage, np.float64)
  logits = scale * query @ passage.T
  if mask is not None:
    logits = np.where(mask[None, :], logits, -np.inf)
  forward = [-np_log_softmax(logits[i])[positive_index[i]] for i in range(len(query))]
  loss = np.mean(forward)
  if symmetric:
    backward = []
    for i, row in enumerate(positive_index):  # positive passage `row` against every query
      scores = scale * query @ passage[row]
      backward.append(-(scores[i] - np.log(np.sum(np.exp(scores)))))
    loss = 0.5 * (loss + np.mean(backward))
  accuracy = np.mean(np.argmax(logits, axis=-1) == positive_index)
  positive = np.mean([logits[i, positive_index[i]] for i in range(len(query))])
  return loss, accuracy, positive


def np_pairwise(pos_scores, neg_scores):
  scores = np.concatenate([np.asarray(pos_scores, np.float64)[:, None],
                           np.asarray(neg_scores, np.float64)], axis=1)
  return np.mean(-np.log(np.exp(scores[:, 0]) / np.sum(np.exp(scores), axis=1)))


def np_kl(student, teacher, temperature):
  log_p_s = np_log_softmax(np.asarray(student, np.float64) / temperature)
  log_p_t = np_log_softmax(np.asarray(teacher, np.float64) / temperature)
  p_t = np.exp(log_p_t)
  terms = np.zeros_like(p_t)
  present = p_t > 0
  terms[present] = p_t[present] * (log_p_t[present] - log_p_s[present])
  return np.mean(np.sum(terms, axis=-1))


def rel_err(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12)


def random_batch(seed, queries=6, n_neg=2, dim=8, dtype=np.float32):
  rng = np.random.default_rng(seed)
  query = rng.normal(size=(queries, dim)).astype(dtype)
  passages = rng.normal(size=(queries * (1 + n_neg), dim)).astype(dtype)
  positive_index = rng.permutation(len(passages))[:queries].astype(np.int32)
  return query, passages, positive_index


# --- layout --------------------------------------------------------------------------------------


def test_dpr_passage_layout_is_positives_then_query_major_negatives():
  positives = np.arange(3)[:, None] * np.ones((3, 4))
  negatives = 10 + np.arange(6).reshape(3, 2)[..., None] * np.ones((3, 2, 4))
  passages, positive_index = losses.dpr_passage_layout(positives, negatives)
  np.testing.assert_array_equal(passages[:, 0], [0, 1, 2, 10, 11, 12, 13, 14, 15])
  np.testing.assert_array_equal(positive_index, [0, 1, 2])
  # Pytrees of tokenised inputs follow the same layout, leaf by leaf.
  tokens, _ = losses.dpr_passage_layout({"ids": np.zeros((3, 5), np.int32)},
                                        {"ids": np.ones((3, 2, 5), np.int32)})
  assert tokens["ids"].shape == (9, 5) and int(tokens["ids"][3:].min()) == 1
  with pytest.raises(ValueError, match="do not match"):
    losses.dpr_passage_layout(positives, np.zeros((2, 2, 4)))


# --- in-batch softmax ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale,symmetric,masked,n_neg", [
    (1.0, False, False, 0), (1.0, False, False, 2), (20.0, True, False, 1),
    (0.3, False, True, 2), (50.0, True, True, 3)])
def test_in_batch_matches_numpy(scale, symmetric, masked, n_neg):
  query, passages, positive_index = random_batch(n_neg + int(scale), n_neg=n_neg)
  mask = None
  if masked:
    mask = np.ones(len(passages), bool)
    mask[np.setdiff1d(np.arange(len(passages)), positive_index)[:2]] = False
  loss, metrics = losses.in_batch_softmax_loss(
      query, passages, positive_index=positive_index, scale=scale, symmetric=symmetric,
      passage_mask=mask)
  expected_loss, expected_accuracy, expected_positive = np_in_batch(
      query, passages, positive_index, scale, symmetric, mask)
  assert rel_err(loss, expected_loss) <= 1e-6
  # A mean of logits can cancel to ~0, so its error is measured against the logits' magnitude.
  magnitude = scale * np.max(np.abs(query.astype(np.float64) @ passages.T))
  assert abs(float(metrics["positive_logit_mean"]) - expected_positive) <= 1e-6 * magnitude
  assert float(metrics["accuracy"]) == pytest.approx(expected_accuracy)


def test_in_batch_hand_checked():
  query = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  positives = query.copy()
  negatives = np.array([[[0.0, 0.0]], [[0.5, 0.5]]], np.float32)
  passages, positive_index = losses.dpr_passage_layout(positives, negatives)
  loss, metrics = losses.in_batch_softmax_loss(query, passages, positive_index=positive_index)
  # Each query scores [own positive 1, other positive 0, negatives 0 and 0.5].
  expected = np.log(1 + 2 * np.exp(-1) + np.exp(-0.5))
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(metrics["accuracy"]) == 1.0
  assert float(metrics["positive_logit_mean"]) == 1.0


def test_scale_is_inverse_temperature():
  query, passages, positive_index = random_batch(1)
  scaled, _ = losses.in_batch_softmax_loss(query, passages, positive_index=positive_index,
                                           scale=20.0, symmetric=True)
  premultiplied, _ = losses.in_batch_softmax_loss(20.0 * query, passages, symmetric=True,
                                                  positive_index=positive_index)
  assert float(scaled) == pytest.approx(float(premultiplied), rel=1e-6)
  # A huge scale stays finite (log_softmax, no raw exp) and matches the float64 reference.
  huge, _ = losses.in_batch_softmax_loss(query, passages, positive_index=positive_index,
                                         scale=1e4)
  assert rel_err(huge, np_in_batch(query, passages, positive_index, 1e4)[0]) <= 1e-6


def test_masked_rows_never_receive_probability():
  query, passages, positive_index = random_batch(2, n_neg=1)
  # Padding rows that would dominate every softmax if they were counted.
  padded = np.concatenate([passages, 100.0 * query[:3]])
  mask = np.arange(len(padded)) < len(passages)
  loss_fn = lambda q, p: losses.in_batch_softmax_loss(
      q, p, positive_index=positive_index, passage_mask=mask, symmetric=True)[0]
  masked_loss, (_, passage_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(query, padded)
  unpadded, _ = losses.in_batch_softmax_loss(query, passages, positive_index=positive_index,
                                             symmetric=True)
  assert float(masked_loss) == pytest.approx(float(unpadded), rel=1e-6)
  assert np.all(np.asarray(passage_grads)[~mask] == 0.0)
  assert np.all(np.isfinite(passage_grads))


def test_bfloat16_inputs_give_a_float32_loss():
  query, passages, positive_index = random_batch(3)
  loss32, _ = losses.in_batch_softmax_loss(query, passages, positive_index=positive_index,
                                           scale=5.0)
  loss16, metrics = losses.in_batch_softmax_loss(
      jnp.asarray(query, jnp.bfloat16), jnp.asarray(passages, jnp.bfloat16),
      positive_index=positive_index, scale=5.0)
  assert loss16.dtype == jnp.float32 and metrics["positive_logit_mean"].dtype == jnp.float32
  # Only the input rounding differs (bfloat16 keeps ~3 significant digits).
  assert float(loss16) == pytest.approx(float(loss32), rel=2e-2)


def test_in_batch_gradient_matches_finite_differences():
  query, passages, positive_index = random_batch(4, queries=3, n_neg=1, dim=4)
  mask = np.ones(len(passages), bool)
  mask[np.setdiff1d(np.arange(len(passages)), positive_index)[0]] = False
  kwargs = dict(scale=2.0, symmetric=True)
  grads = jax.grad(lambda q, p: losses.in_batch_softmax_loss(
      q, p, positive_index=positive_index, passage_mask=mask, **kwargs)[0],
                   argnums=(0, 1))(query, passages)
  # Central differences of the float64 NumPy reference: truncation error ~eps**2 = 1e-12.
  eps = 1e-6
  for which, array in enumerate((query, passages)):
    numeric = np.zeros(array.shape)
    for index in np.ndindex(array.shape):
      plus, minus = [np.array(query, np.float64), np.array(passages, np.float64)], None
      minus = [plus[0].copy(), plus[1].copy()]
      plus[which][index] += eps
      minus[which][index] -= eps
      numeric[index] = (np_in_batch(*plus, positive_index, mask=mask, **kwargs)[0]
                        - np_in_batch(*minus, positive_index, mask=mask, **kwargs)[0]) / (2 * eps)
    assert np.all(np.isfinite(grads[which]))
    assert rel_err(grads[which], numeric) <= 1e-5


# --- pairwise softmax and KL ---------------------------------------------------------------------


def test_pairwise_softmax_matches_numpy_and_hand_checked():
  rng = np.random.default_rng(5)
  pos, neg = rng.normal(size=5).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
  assert rel_err(losses.pairwise_softmax_loss(pos, neg), np_pairwise(pos, neg)) <= 1e-6
  assert float(losses.pairwise_softmax_loss(jnp.zeros(2), jnp.zeros((2, 1)))) == pytest.approx(
      np.log(2.0), rel=1e-6)
  # Shifting a row's scores changes nothing; large scores stay finite, gradients too.
  shifted = losses.pairwise_softmax_loss(pos + 1e3, neg + 1e3)
  assert float(shifted) == pytest.approx(float(np_pairwise(pos, neg)), rel=1e-4)
  grads = jax.grad(losses.pairwise_softmax_loss, argnums=(0, 1))(pos * 1e4, neg)
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert losses.pairwise_softmax_loss(pos.astype(jnp.bfloat16), neg).dtype == jnp.float32


def test_kl_distillation_matches_numpy_and_hand_checked():
  rng = np.random.default_rng(6)
  student, teacher = rng.normal(size=(2, 4, 7)).astype(np.float32)
  for temperature in (1.0, 0.25):
    assert rel_err(losses.kl_distillation_loss(student, teacher, temperature),
                   np_kl(student, teacher, temperature)) <= 1e-6
  # Equal distributions: 0. One-hot teacher vs uniform student over 2: log 2.
  assert abs(float(losses.kl_distillation_loss(student, student, 0.5))) < 1e-6
  one_hot = np.array([[0.0, -np.inf]], np.float32)
  assert float(losses.kl_distillation_loss(np.zeros((1, 2)), one_hot)) == pytest.approx(
      np.log(2.0), rel=1e-6)
  # Excluded (-inf) teacher entries: finite loss and gradients, still equal to the reference.
  teacher[:, 2] = -np.inf
  assert rel_err(losses.kl_distillation_loss(student, teacher, 0.25),
                 np_kl(student, teacher, 0.25)) <= 1e-6
  student_grad, teacher_grad = jax.grad(losses.kl_distillation_loss, argnums=(0, 1))(
      student, teacher, 0.25)
  assert np.all(np.isfinite(student_grad)) and np.all(np.asarray(teacher_grad) == 0.0)
  # d/ds of mean_rows KL = (p_s - p_t) / (T * rows).
  p_s, p_t = np.exp(np_log_softmax(student / 0.25)), np.exp(np_log_softmax(teacher / 0.25))
  assert rel_err(student_grad, (p_s - p_t) / (0.25 * 4)) <= 1e-5
  assert losses.kl_distillation_loss(student.astype(jnp.bfloat16), teacher).dtype == jnp.float32


# --- global batch on a mesh ----------------------------------------------------------------------


def _mesh(shape):
  return Mesh(np.asarray(jax.devices()[:8]).reshape(shape), ("data", "model"))


def _loss_and_grads(**loss_kwargs):
  def loss_and_grads(query, passages, positive_index):
    loss_fn = lambda q, p: losses.in_batch_softmax_loss(
        q, p, positive_index=positive_index, **loss_kwargs)
    return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(query, passages)
  return loss_and_grads


def _sharded_loss_and_grads(mesh, **loss_kwargs):
  """The loss written on global arrays, jitted with every batch array split over `data`."""
  rows = NamedSharding(mesh, P("data"))
  return jax.jit(_loss_and_grads(**loss_kwargs), in_shardings=(rows, rows, rows))


@pytest.mark.parametrize("shape", [(8, 1), (4, 2)])
def test_sharded_global_batch_equals_one_device(shape):
  assert len(jax.devices()) >= 8, "conftest.py should provide 8 fake CPU devices"
  query, passages, positive_index = random_batch(7, queries=16, n_neg=1, dim=16)
  kwargs = dict(scale=10.0, symmetric=True)
  sharded = _sharded_loss_and_grads(_mesh(shape), **kwargs)(query, passages, positive_index)
  single = jax.jit(_loss_and_grads(**kwargs))(
      *jax.device_put((query, passages, positive_index), jax.devices()[0]))
  (loss, metrics), grads = sharded
  (loss1, metrics1), grads1 = single
  assert rel_err(loss, loss1) <= 1e-6
  assert rel_err(metrics["positive_logit_mean"], metrics1["positive_logit_mean"]) <= 1e-6
  for g, g1 in zip(grads, grads1):
    assert rel_err(g, g1) <= 1e-6
  assert grads[1].sharding.num_devices == 8


def test_labels_stay_aligned_with_hard_negatives_under_sharding():
  rng = np.random.default_rng(8)
  unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
  query = unit(rng.normal(size=(16, 16)))
  negatives = unit(rng.normal(size=(16, 2, 16)))
  # Each positive is its query itself, so with unit vectors it is the unique best passage.
  passages, positive_index = losses.dpr_passage_layout(query.copy(), negatives)
  step = _sharded_loss_and_grads(_mesh((8, 1)), scale=5.0)
  (loss, metrics), _ = step(query, np.asarray(passages), np.asarray(positive_index))
  assert float(metrics["accuracy"]) == 1.0
  # Shuffle the passage rows: positive_index must follow them (inverse permutation).
  order = rng.permutation(len(passages))
  shuffled_index = np.argsort(order)[np.asarray(positive_index)].astype(np.int32)
  (loss_shuffled, metrics_shuffled), _ = step(query, np.asarray(passages)[order], shuffled_index)
  assert float(metrics_shuffled["accuracy"]) == 1.0
  assert rel_err(loss_shuffled, loss) <= 1e-6
  # The check can fail: stale (unshuffled) labels on shuffled rows are not aligned.
  (_, metrics_stale), _ = step(query, np.asarray(passages)[order], np.asarray(positive_index))
  assert float(metrics_stale["accuracy"]) < 1.0


def _numpy_maxp_nll(q, p, positive_doc, per_doc, mask, scale):
  """Reference: document logit = max over its unmasked passages, NLL of the positive doc."""
  logits = scale * q.astype(np.float64) @ p.astype(np.float64).T      # [B, P]
  logits = np.where(mask, logits, -np.inf)
  docs = logits.reshape(len(q), -1, per_doc).max(axis=-1)             # [B, D]
  shifted = docs - docs.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return -np.mean(log_probs[np.arange(len(q)), positive_doc])


@pytest.mark.parametrize("per_query_mask", [False, True])
def test_maxp_loss_matches_numpy(per_query_mask):
  """MaxP (ANCE): a document scores its best passage; missing passages never count; with a
  per-query mask (loss.in_batch=False) each query sees only its own documents."""
  rng = np.random.default_rng(3)
  batch, group, per_doc, dim = 4, 2, 3, 8
  q = rng.normal(size=(batch, dim)).astype(np.float32)
  p = rng.normal(size=(batch * group * per_doc, dim)).astype(np.float32)
  valid = rng.random(batch * group * per_doc) < 0.7
  valid[::per_doc] = True  # every document has its first passage
  mask = np.broadcast_to(valid, (batch, valid.size))
  if per_query_mask:
    own = np.arange(valid.size)[None, :] // (group * per_doc) == np.arange(batch)[:, None]
    mask = own & valid[None, :]
  positive = np.arange(batch) * group
  loss, metrics = losses.in_batch_softmax_loss(
      jnp.asarray(q), jnp.asarray(p), positive_index=jnp.asarray(positive), scale=2.0,
      passage_mask=jnp.asarray(mask if per_query_mask else valid), passages_per_doc=per_doc)
  expected = _numpy_maxp_nll(q, p, positive, per_doc, mask, 2.0)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_maxp_rejects_passages_that_do_not_group():
  with pytest.raises(ValueError, match="groups of 3"):
    losses.in_batch_softmax_loss(jnp.ones((2, 4)), jnp.ones((8, 4)),
                                 positive_index=jnp.arange(2), passages_per_doc=3)


# --- late interaction (ColBERT) ------------------------------------------------------------------


def np_maxsim(q, d, d_mask, q_mask=None):
  """Loops: sum over query tokens of the best dot product with any kept document token."""
  q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
  out = np.zeros((len(q), len(d)))
  for a in range(len(q)):
    for b in range(len(d)):
      kept = [j for j in range(d.shape[1]) if d_mask[b, j]]
      for i in range(q.shape[1]):
        if q_mask is not None and not q_mask[a, i]:
          continue
        out[a, b] += max(float(q[a, i] @ d[b, j]) for j in kept) if kept else -np.inf
  return out


def np_late_interaction(scores, group, mode):
  scores = np.asarray(scores, np.float64)
  num = scores.shape[0]
  own = np.stack([scores[i, i * group:(i + 1) * group] for i in range(num)])
  own_loss = -np.mean(np_log_softmax(own)[:, 0])
  if mode == "pairwise":
    return own_loss
  full = scores.copy()
  if mode == "nway_in_batch":
    for i in range(num):
      full[i, i * group + 1:(i + 1) * group] = -np.inf
  in_batch = -np.mean([np_log_softmax(full[i])[i * group] for i in range(num)])
  return own_loss + in_batch if mode == "nway_in_batch" else in_batch


def test_maxsim_scores_match_loops_with_masks():
  rng = np.random.default_rng(11)
  q = rng.normal(size=(3, 5, 4)).astype(np.float32)
  d = rng.normal(size=(4, 6, 4)).astype(np.float32)
  d_mask = rng.random((4, 6)) > 0.3
  d_mask[:, 0] = True
  q_mask = rng.random((3, 5)) > 0.2
  assert rel_err(losses.maxsim_scores(q, d, d_mask), np_maxsim(q, d, d_mask)) <= 1e-6
  assert rel_err(losses.maxsim_scores(q, d, d_mask, q_mask),
                 np_maxsim(q, d, d_mask, q_mask)) <= 1e-6
  # A masked token never wins, however large: scaling it changes nothing.
  d_big = d.copy()
  d_big[~d_mask] *= 1e3
  assert rel_err(losses.maxsim_scores(q, d_big, d_mask), np_maxsim(q, d, d_mask)) <= 1e-6
  d_mask[2] = False
  assert np.all(np.asarray(losses.maxsim_scores(q, d, d_mask))[:, 2] == -np.inf)


@pytest.mark.parametrize("mode", losses.LATE_INTERACTION_LOSSES)
def test_late_interaction_losses_match_numpy(mode):
  rng = np.random.default_rng(12)
  scores = rng.normal(size=(4, 12)).astype(np.float32) * 3
  loss, metrics = losses.late_interaction_loss(scores, 3, mode)
  assert rel_err(loss, np_late_interaction(scores, 3, mode)) <= 1e-6
  own = np.stack([scores[i, i * 3:(i + 1) * 3] for i in range(4)])
  assert float(metrics["accuracy"]) == pytest.approx(np.mean(own.argmax(1) == 0))
  # ColBERT v1's 2-way softmax is the pairwise loss over (d+, d-).
  if mode == "pairwise":
    two = np.stack([scores[i, i * 2:(i + 1) * 2] for i in range(4)])
    loss2, _ = losses.late_interaction_loss(scores[:, :8], 2, mode)
    assert rel_err(loss2, np_pairwise(two[:, 0], two[:, 1:])) <= 1e-6
  grads = jax.grad(lambda s: losses.late_interaction_loss(s, 3, mode)[0])(scores)
  assert np.all(np.isfinite(grads))
  with pytest.raises(ValueError, match="loss.type"):
    losses.late_interaction_loss(scores, 3, "listwise")


def test_kl_distillation_student_temperature():
  rng = np.random.default_rng(13)
  student, teacher = rng.normal(size=(2, 3, 5)).astype(np.float32)
  p_t = np.exp(np_log_softmax(teacher / 0.25))
  log_p_s = np_log_softmax(student)
  expected = np.mean(np.sum(p_t * (np.log(p_t) - log_p_s), axis=-1))
  assert rel_err(losses.kl_distillation_loss(student, teacher, 0.25, student_temperature=1.0),
                 expected) <= 1e-6


def _moco_numpy(q, k, queue, temperature):
  q, k, queue = (np.asarray(x, np.float64) for x in (q, k, queue))
  logits = np.concatenate([np.sum(q * k, -1, keepdims=True), q @ queue.T], axis=1) / temperature
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return -log_probs[:, 0].mean(), np.mean(logits.argmax(axis=1) == 0)


def test_moco_loss_matches_numpy():
  rng = np.random.default_rng(0)
  q, k = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
  k[:3] = q[:3] * 3  # some queries find their key
  queue = rng.standard_normal((20, 8))
  loss, metrics = losses.moco_loss(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32),
                                   jnp.asarray(queue, jnp.float32), temperature=0.5)
  expected_loss, expected_accuracy = _moco_numpy(q, k, queue, 0.5)
  np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
  assert float(metrics["accuracy"]) == pytest.approx(expected_accuracy)
  assert float(metrics["positive_logit_mean"]) == pytest.approx(np.sum(q * k, -1).mean() / 0.5,
                                                                 rel=1e-5)


def test_moco_loss_hand_checked():
  # One query, its key scores 1, two queue keys score 0 and -1; T = 1.
  loss, _ = losses.moco_loss(jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 0.0]]),
                             jnp.array([[0.0, 1.0], [-1.0, 0.0]]), temperature=1.0)
  expected = -np.log(np.e / (np.e + 1.0 + np.exp(-1.0)))
  assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_embedding_std_is_torch_std_mean():
  x = np.random.default_rng(1).standard_normal((5, 3))
  assert float(losses.embedding_std(jnp.asarray(x, jnp.float32))) == pytest.approx(
      x.std(axis=0, ddof=1).mean(), rel=1e-5)
  assert float(losses.embedding_std(jnp.ones((4, 3)))) == 0.0  # collapsed


def test_masked_lm_loss_matches_torch_cross_entropy():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
  labels = rng.integers(0, 11, size=(3, 7))
  labels[rng.random(labels.shape) < 0.6] = -100
  loss, metrics = losses.masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels))
  want = torch.nn.CrossEntropyLoss()(torch.from_numpy(logits).reshape(-1, 11),
                                     torch.from_numpy(labels).reshape(-1))
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  keep = labels != -100
  assert float(metrics["labelled"]) == keep.sum()
  assert float(metrics["accuracy"]) == pytest.approx(
      np.mean(logits.argmax(-1)[keep] == labels[keep]))
  empty, _ = losses.masked_lm_loss(jnp.asarray(logits), jnp.full((3, 7), -100))
  assert float(empty) == 0.0
