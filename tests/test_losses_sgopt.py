"""Tests for the SG-OPT / SG losses and the regulariser of Kim, Yoo & Lee (ACL 2021).

Three independent references, none calling the jnp code:
  * the paper's equations, written as explicit float64 loops of exp / sums (`paper_*`);
  * NumPy ports of the released code's `NTXentLoss.forward` / `NTXentLossOriginal.forward`
    (galsang/SG-BERT `loss.py`), keeping its loops, diag / mask indexing and concatenations;
  * when torch is installed, that forward logic run in torch itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from retrieval_jax import losses

# --- references from the paper's equations ------------------------------------------------------


def cosine(u, v):
  """g(u, v), with torch.nn.CosineSimilarity's per-norm eps clamp."""
  u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
  return float(u @ v / (max(np.linalg.norm(u), 1e-8) * max(np.linalg.norm(v), 1e-8)))


def paper_sg_opt(c, h, tau):
  """L^opt3: row (i, k) has positive h_{i,k}; the denominator adds h_{m,n} for every m != i
  and every layer n; mean over the b * (l + 1) rows."""
  phi = lambda u, v: np.exp(cosine(u, v) / tau)
  b, num_layers = h.shape[:2]
  terms = []
  for i in range(b):
    negatives = sum(phi(c[i], h[m, n]) for m in range(b) if m != i for n in range(num_layers))
    for k in range(num_layers):
      positive = phi(c[i], h[i, k])
      terms.append(-np.log(positive / (positive + negatives)))
  return np.mean(terms)


def paper_sg(c, h, tau):
  """L^base over X = {c_1..c_b, h_1..h_b}, mu(c_i) = h_i and mu(h_i) = c_i; 1/(2b) sum."""
  phi = lambda u, v: np.exp(cosine(u, v) / tau)
  b = len(c)
  x = list(c) + list(h)
  partner = lambda m: (m + b) % (2 * b)
  terms = []
  for m in range(2 * b):
    denominator = sum(phi(x[m], x[k]) for k in range(2 * b) if k != m)
    terms.append(-np.log(phi(x[m], x[partner(m)]) / denominator))
  return np.mean(terms)


def paper_sg_opt_accuracy(c, h):
  b, num_layers = h.shape[:2]
  hits = []
  for i in range(b):
    best_negative = max(cosine(c[i], h[m, n]) for m in range(b) if m != i
                        for n in range(num_layers))
    hits += [cosine(c[i], h[i, k]) >= best_negative for k in range(num_layers)]
  return np.mean(hits)


# --- NumPy ports of the released code ------------------------------------------------------------


def np_cross_entropy_sum(logits, labels):
  logits = np.asarray(logits, np.float64)
  shift = logits.max(axis=1, keepdims=True)
  log_probs = logits - shift - np.log(np.exp(logits - shift).sum(axis=1, keepdims=True))
  return -np.sum(log_probs[np.arange(len(labels)), labels])


def np_cosine_matrix(x, y):
  """`CosineSimilarity(dim=-1)(x.unsqueeze(1), y.unsqueeze(0))`."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
  y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-8)
  return x @ y.T


def code_ntxent_forward(cls, cont, temperature):
  """`NTXentLoss.forward` (the SG-OPT objective), line by line."""
  batch_size, num_layers = cls.shape[0], cont.shape[1]
  positives, negatives = [], []
  for i in range(num_layers):
    similarity_matrix = np_cosine_matrix(cls, cont[:, i])
    positives.append(np.diag(similarity_matrix))
    neg_idx = (1 - np.eye(batch_size)).astype(bool)
    negatives.append(similarity_matrix[neg_idx].reshape(batch_size, -1))
  positives = np.concatenate(positives).reshape(-1, 1)
  negatives = np.concatenate(negatives, axis=1)
  negatives = np.concatenate([negatives] * num_layers, axis=0)
  logits = np.concatenate((positives, negatives), axis=1) / temperature
  labels = np.zeros(batch_size * num_layers, dtype=int)
  return np_cross_entropy_sum(logits, labels) / (batch_size * num_layers)


def code_ntxent_original_forward(zis, zjs, temperature):
  """`NTXentLossOriginal.forward` with its labels fixed to 2B zeros (as written it passes B
  labels for 2B rows and cannot run); keeps the code's `sum / batch_size`."""
  batch_size = zis.shape[0]
  representations = np.concatenate([zjs, zis], axis=0)
  similarity_matrix = np_cosine_matrix(representations, representations)
  l_pos = np.diag(similarity_matrix, batch_size)
  r_pos = np.diag(similarity_matrix, -batch_size)
  positives = np.concatenate([l_pos, r_pos]).reshape(2 * batch_size, 1)
  n = 2 * batch_size
  mask = (1 - (np.eye(n) + np.eye(n, n, k=-batch_size) + np.eye(n, n, k=batch_size))).astype(bool)
  negatives = similarity_matrix[mask].reshape(2 * batch_size, -1)
  logits = np.concatenate((positives, negatives), axis=1) / temperature
  return np_cross_entropy_sum(logits, np.zeros(2 * batch_size, dtype=int)) / batch_size


# --- helpers -------------------------------------------------------------------------------------


def random_inputs(seed, b, num_layers, dim=16, shared=0.0):
  """Anchors and views; `shared` > 0 correlates a sentence's views with its anchor."""
  rng = np.random.default_rng(seed)
  anchors = rng.normal(size=(b, dim))
  views = rng.normal(size=(b, num_layers, dim)) + shared * anchors[:, None, :]
  return anchors.astype(np.float32), views.astype(np.float32)


def rel_err(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12)


CASES = [(2, 1, 1.0), (3, 4, 0.5), (5, 13, 0.01), (8, 3, 0.05), (4, 2, 0.01)]

# --- SG-OPT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,num_layers,tau", CASES)
@pytest.mark.parametrize("shared", [0.0, 0.5])
def test_sg_opt_matches_paper_equation_and_released_code(b, num_layers, tau, shared):
  anchors, views = random_inputs(b * 100 + num_layers, b, num_layers, shared=shared)
  loss, metrics = losses.sg_opt_loss(jnp.asarray(anchors), jnp.asarray(views), tau)
  paper = paper_sg_opt(anchors, views, tau)
  code = code_ntxent_forward(anchors, views, tau)
  np.testing.assert_allclose(code, paper, rtol=1e-10, atol=1e-12)  # paper == code (float64)
  # float32 cosines carry ~1e-7 error, i.e. ~1e-5 in a logit at tau = 0.01.
  np.testing.assert_allclose(float(loss), paper, rtol=1e-5, atol=1e-6 / tau)
  assert loss.dtype == jnp.float32
  assert float(metrics["accuracy"]) == pytest.approx(paper_sg_opt_accuracy(anchors, views))
  positive_cosines = [cosine(anchors[i], views[i, k]) for i in range(b) for k in range(num_layers)]
  assert float(metrics["positive_cosine_mean"]) == pytest.approx(np.mean(positive_cosines),
                                                                 abs=1e-6)


def test_sg_opt_hand_checked_case():
  # b = 2, one layer, orthogonal unit vectors: row i has cos 1 with its view and cos 0 with
  # the other sentence's view, so each row is -log(e^{1/t} / (e^{1/t} + e^0)).
  anchors = np.eye(2, 4, dtype=np.float32)
  views = anchors[:, None, :] * 3.0  # the norm is irrelevant
  loss, metrics = losses.sg_opt_loss(anchors, views, 0.5)
  assert float(loss) == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)
  assert float(metrics["accuracy"]) == 1.0
  # The other layers of the own sentence are not negatives: a second, orthogonal layer leaves
  # row (i, 0) unchanged and row (i, 1) has positive cos 0 against negatives of cos 0 and 0.
  second = np.roll(np.eye(2, 4, dtype=np.float32), 2, axis=1)[:, None, :]
  loss2, _ = losses.sg_opt_loss(anchors, np.concatenate([views, second], axis=1), 0.5)
  row0 = np.log1p(2 * np.exp(-2.0))  # negatives: the other sentence's two layers, cos 0 each
  row1 = np.log(3.0)
  assert float(loss2) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_sg_opt_gradients_finite_and_bfloat16():
  anchors, views = random_inputs(3, 6, 13, dim=32, shared=2.0)
  grad_fn = jax.jit(jax.grad(lambda a, v: losses.sg_opt_loss(a, v, 0.01)[0], argnums=(0, 1)))
  for g in grad_fn(jnp.asarray(anchors), jnp.asarray(views)):
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)
  # A zero vector (cosine 0, as torch's eps clamp) still has a finite gradient.
  views[0, 0] = 0.0
  for g in grad_fn(jnp.asarray(anchors), jnp.asarray(views)):
    assert np.all(np.isfinite(np.asarray(g)))
  loss, _ = losses.sg_opt_loss(jnp.asarray(anchors, jnp.bfloat16),
                               jnp.asarray(views, jnp.bfloat16), 0.01)
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))


def test_sg_opt_rejects_bad_shapes():
  anchors, views = random_inputs(0, 3, 2)
  with pytest.raises(ValueError):
    losses.sg_opt_loss(anchors, views[:, 0], 0.1)
  with pytest.raises(ValueError):
    losses.sg_opt_loss(anchors[:2], views, 0.1)


# --- SG (plain NT-Xent) --------------------------------------------------------------------------


@pytest.mark.parametrize("b,unused_layers,tau", CASES)
def test_nt_xent_matches_paper_equation_and_released_code(b, unused_layers, tau):
  del unused_layers
  rng = np.random.default_rng(b)
  anchors = rng.normal(size=(b, 16)).astype(np.float32)
  views = (rng.normal(size=(b, 16)) + anchors).astype(np.float32)
  loss, metrics = losses.nt_xent_loss(anchors, views, tau)
  paper = paper_sg(anchors, views, tau)
  np.testing.assert_allclose(float(loss), paper, rtol=1e-5, atol=1e-6 / tau)
  # The released code (once given 2B labels) divides the 2B-row sum by B: twice the paper.
  assert rel_err(code_ntxent_original_forward(anchors, views, tau), 2 * paper) <= 1e-10
  assert float(metrics["positive_cosine_mean"]) == pytest.approx(
      np.mean([cosine(anchors[i], views[i]) for i in range(b)]), abs=1e-6)
  x = np.concatenate([views, anchors])
  sims = np_cosine_matrix(x, x)
  np.fill_diagonal(sims, -np.inf)
  accuracy = np.mean(np.argmax(sims, axis=1) == (np.arange(2 * b) + b) % (2 * b))
  assert float(metrics["accuracy"]) == pytest.approx(accuracy)


def test_nt_xent_gradients_finite():
  anchors, views = random_inputs(4, 6, 1, dim=32, shared=2.0)
  grads = jax.grad(lambda a, v: losses.nt_xent_loss(a, v, 0.01)[0], argnums=(0, 1))(
      jnp.asarray(anchors), jnp.asarray(views[:, 0]))
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)


# --- the released forward run in torch -----------------------------------------------------------


def test_sg_opt_matches_released_forward_in_torch():
  torch = pytest.importorskip("torch")
  cos = torch.nn.CosineSimilarity(dim=-1)
  criterion = torch.nn.CrossEntropyLoss(reduction="sum")

  def forward(cls, cont, temperature):  # `NTXentLoss.forward`, similarity = cosine
    batch_size, num_layers = cls.size(0), cont.size(1)
    positives, negatives = [], []
    for i in range(num_layers):
      similarity_matrix = cos(cls.unsqueeze(1), cont[:, i].unsqueeze(0))
      positives.append(torch.diag(similarity_matrix))
      neg_idx = (1 - torch.eye(batch_size)).bool()
      negatives.append(similarity_matrix[neg_idx].view(batch_size, -1))
    positives = torch.cat(positives).view(-1, 1)
    negatives = torch.cat([torch.cat(negatives, dim=1)] * num_layers, dim=0)
    logits = torch.cat((positives, negatives), dim=1) / temperature
    labels = torch.zeros(batch_size * num_layers).long()
    return criterion(logits, labels) / (batch_size * num_layers)

  for seed, (b, num_layers, tau) in enumerate(CASES):
    anchors, views = random_inputs(seed, b, num_layers, shared=1.0)
    expected = forward(torch.from_numpy(anchors).double(), torch.from_numpy(views).double(), tau)
    loss, _ = losses.sg_opt_loss(anchors, views, tau)
    np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-5, atol=1e-6 / tau)


def test_released_sg_forward_cannot_run_as_written_in_torch():
  """`NTXentLossOriginal.forward` pairs 2B logit rows with `torch.zeros(batch_size)` labels."""
  torch = pytest.importorskip("torch")
  b = 3
  logits = torch.randn(2 * b, 2 * b - 1)
  with pytest.raises(ValueError, match="batch_size"):
    torch.nn.CrossEntropyLoss(reduction="sum")(logits, torch.zeros(b).long())


# --- global batch on a mesh ----------------------------------------------------------------------


@pytest.mark.parametrize("loss_name", ["sg_opt_loss", "nt_xent_loss"])
def test_sharded_batch_equals_one_device(loss_name):
  assert len(jax.devices()) >= 8, "conftest.py should provide 8 fake CPU devices"
  anchors, views = random_inputs(9, 16, 5, dim=16, shared=1.0)
  if loss_name == "nt_xent_loss":
    views = views[:, 2]
  loss_fn = getattr(losses, loss_name)
  step = lambda a, v: jax.value_and_grad(
      lambda a, v: loss_fn(a, v, 0.05), argnums=(0, 1), has_aux=True)(a, v)
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(8), ("data",))
  rows = NamedSharding(mesh, P("data"))
  (loss, metrics), grads = jax.jit(step, in_shardings=(rows, rows))(anchors, views)
  (loss1, metrics1), grads1 = jax.jit(step)(
      *jax.device_put((anchors, views), jax.devices()[0]))
  assert rel_err(loss, loss1) <= 1e-6
  assert float(metrics["accuracy"]) == float(metrics1["accuracy"])
  for g, g1 in zip(grads, grads1):
    assert rel_err(g, g1) <= 1e-5
  assert grads[1].sharding.num_devices == 8


# --- the regulariser -----------------------------------------------------------------------------


def _tree(rng, dtype=np.float32):
  return {"embeddings": {"word": rng.normal(size=(7, 4)).astype(dtype),
                         "norm": {"scale": rng.normal(size=(4,)).astype(dtype)}},
          "layers": [{"kernel": rng.normal(size=(4, 4)).astype(dtype),
                      "bias": rng.normal(size=(4,)).astype(dtype)} for _ in range(2)]}


def test_squared_distance_matches_numpy():
  rng = np.random.default_rng(0)
  tuned, fixed = _tree(rng), _tree(rng)
  expected = (np.sum((tuned["embeddings"]["word"].astype(np.float64)
                      - fixed["embeddings"]["word"]) ** 2)
              + np.sum((tuned["embeddings"]["norm"]["scale"].astype(np.float64)
                        - fixed["embeddings"]["norm"]["scale"]) ** 2)
              + sum(np.sum((tuned["layers"][i][k].astype(np.float64)
                            - fixed["layers"][i][k]) ** 2)
                    for i in range(2) for k in ("kernel", "bias")))
  distance = losses.squared_distance(tuned, fixed)
  assert distance.dtype == jnp.float32
  assert float(distance) == pytest.approx(expected, rel=1e-6)
  # compute_diff: sum of torch.norm(theta_F - theta_T, p=2) ** 2 (Frobenius over each tensor).
  norms = [np.linalg.norm((a.astype(np.float64) - b).ravel()) ** 2 for a, b in
           zip(jax.tree_util.tree_leaves(tuned), jax.tree_util.tree_leaves(fixed))]
  assert float(distance) == pytest.approx(sum(norms), rel=1e-6)
  # Gradient with respect to the tuned side: 2 (theta_T - theta_F).
  grads = jax.jit(jax.grad(losses.squared_distance))(tuned, fixed)
  for g, a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(tuned),
                     jax.tree_util.tree_leaves(fixed)):
    np.testing.assert_allclose(np.asarray(g), 2 * (a - b), rtol=1e-6)


def test_squared_distance_zero_when_equal_and_bfloat16():
  tree = _tree(np.random.default_rng(1))
  assert float(losses.squared_distance(tree, jax.tree_util.tree_map(np.copy, tree))) == 0.0
  assert float(losses.squared_distance({}, {})) == 0.0
  half = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), tree)
  assert losses.squared_distance(half, tree).dtype == jnp.float32


def test_squared_distance_rejects_mismatched_trees():
  tree = _tree(np.random.default_rng(2))
  with pytest.raises(ValueError):
    losses.squared_distance(tree, {"embeddings": tree["embeddings"]})
  other = _tree(np.random.default_rng(3))
  other["layers"][0]["bias"] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError):
    losses.squared_distance(tree, other)
