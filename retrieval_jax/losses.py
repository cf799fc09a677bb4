"""Contrastive and distillation losses: pure `jnp` functions of embeddings or scores.

Every loss computes in float32 whatever the input dtype (bfloat16 embeddings are cast before the
similarity matmul) and goes through `log_softmax`, so large logits never overflow. The functions
take *global* arrays: under `jax.jit` with the batch sharded over the mesh's `data` axis, XLA
gathers the passage embeddings for the similarity matmul, so in-batch negatives span the whole
global batch without any explicit collective here.

Passage layout used by the in-batch loss (and built by `dpr_passage_layout`):

  passages = [positives (B rows) ; hard negatives (B * n_neg rows, query-major)]

Row i < B is the positive of query i; query i's hard negatives are rows
B + i * n_neg ... B + (i + 1) * n_neg - 1. Each query is scored against *every* row, so the other
queries' positives and hard negatives are its in-batch negatives (DPR's "in-batch + BM25").
`in_batch_softmax_loss` itself only needs `positive_index`, so any other layout works too.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# The logits matmul is tiny next to the encoder, so it can afford full float32 precision even on
# TPU (where the default rounds float32 operands to bfloat16 and would blur close scores).
_PRECISION = jax.lax.Precision.HIGHEST


def dpr_passage_layout(positives: Any, negatives: Any) -> tuple[Any, jax.Array]:
  """Stacks positives and per-query hard negatives into one passage batch.

  Works on arrays or pytrees of arrays (embeddings, or tokenised inputs such as
  `{"input_ids": ..., "attention_mask": ...}` before encoding).

  Args:
    positives: Leaves [B, ...]: the positive passage of each query.
    negatives: Leaves [B, n_neg, ...]: each query's hard negatives (n_neg may be 0).

  Returns:
    (passages, positive_index): passages with leaves [B * (1 + n_neg), ...] laid out as
    [positives; negatives flattened query-major], and positive_index = arange(B) [B] int32.
  """
  def stack(pos, neg):
    if neg.shape[0] != pos.shape[0] or neg.shape[2:] != pos.shape[1:]:
      raise ValueError(f"negatives {neg.shape} do not match positives {pos.shape} as "
                       "[B, n_neg, ...] vs [B, ...]")
    return jnp.concatenate([pos, neg.reshape((-1,) + pos.shape[1:]).astype(pos.dtype)], axis=0)

  passages = jax.tree_util.tree_map(stack, positives, negatives)
  num_queries = jax.tree_util.tree_leaves(positives)[0].shape[0]
  return passages, jnp.arange(num_queries, dtype=jnp.int32)


def similarity_logits(query_emb: jax.Array, passage_emb: jax.Array,
                      scale: float = 1.0) -> jax.Array:
  """scale * query_emb @ passage_emb.T in float32: [B, d] x [P, d] -> [B, P]."""
  query = query_emb.astype(jnp.float32)
  passage = passage_emb.astype(jnp.float32)
  return scale * jnp.matmul(query, passage.T, precision=_PRECISION)


def in_batch_softmax_loss(query_emb: jax.Array, passage_emb: jax.Array, *,
                          positive_index: jax.Array, scale: float = 1.0,
                          symmetric: bool = False,
                          passage_mask: jax.Array | None = None,
                          passages_per_doc: int = 1
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NLL of each query's positive among all passages of the (global) batch.

  Args:
    query_emb: [B, d] query embeddings.
    passage_emb: [P, d] passage embeddings, e.g. [B * (1 + n_neg), d] in the layout of
      `dpr_passage_layout` (see the module docstring).
    positive_index: [B] int, the row of passage_emb that is query i's positive.
    scale: Logit multiplier (1 / temperature): 1 for DPR's raw dot product, 20 or 50 for
      cosine similarities.
    symmetric: Also add the passage -> query direction for the positive rows (softmax of each
      positive passage over the B queries, target its own query) and average the two
      directions, as in symmetric InfoNCE. Hard negatives only enter the query -> passage term.
    passage_mask: Optional bool [P], or [B, P] per query; False entries (padding, or passages
      a query must not be scored against) get logit -inf and thus no probability. Positive
      rows must stay unmasked.
    passages_per_doc: MaxP (ANCE): rows come in consecutive groups of this many passages of
      one document, and a document's logit is the max over its (unmasked) passages; then
      `positive_index` and the softmax are over the P / passages_per_doc documents. Every
      document needs at least one unmasked passage.

  Returns:
    (loss, metrics): loss is a float32 scalar; metrics holds float32 scalars `accuracy` (share
    of queries whose argmax passage is their positive) and `positive_logit_mean` (mean scaled
    logit of the positives).
  """
  positive_index = positive_index.astype(jnp.int32)
  logits = similarity_logits(query_emb, passage_emb, scale)  # [B, P]
  if passage_mask is not None:
    # -inf rather than a large negative number: exp() is then exactly 0, so a padding row can
    # never take probability whatever the scale.
    logits = jnp.where(passage_mask if passage_mask.ndim == 2 else passage_mask[None, :],
                       logits, -jnp.inf)
  if passages_per_doc > 1:
    num_rows, num_passages = logits.shape
    if num_passages % passages_per_doc:
      raise ValueError(f"{num_passages} passages do not form groups of {passages_per_doc}")
    logits = jnp.max(logits.reshape(num_rows, -1, passages_per_doc), axis=-1)
  rows = jnp.arange(logits.shape[0])
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(log_probs[rows, positive_index])

  if symmetric:
    # [B, B]: entry (i, j) scores positive passage i against query j; the target is j = i.
    passage_to_query = logits[:, positive_index].T
    log_probs_t = jax.nn.log_softmax(passage_to_query, axis=-1)
    loss = 0.5 * (loss - jnp.mean(log_probs_t[rows, rows]))

  metrics = {
      "accuracy": jnp.mean((jnp.argmax(logits, axis=-1) == positive_index).astype(jnp.float32)),
      "positive_logit_mean": jnp.mean(logits[rows, positive_index]),
  }
  return loss, metrics


def moco_loss(query_emb: jax.Array, key_emb: jax.Array, queue: jax.Array, *,
              temperature: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """InfoNCE of each query against its own key and a queue of earlier keys (MoCo).

  As Contriever's `moco.py`: logits [B, 1 + K] = [q·k, q·queue] / temperature, the target
  column 0; the keys are not differentiated here (the caller stops their gradient).

  Args:
    query_emb: [B, d] queries.
    key_emb: [B, d] their positive keys.
    queue: [K, d] negative keys.
    temperature: Divides every logit.

  Returns:
    (loss, metrics): float32 scalars; `accuracy` (the own key wins) and `positive_logit_mean`.
  """
  q = query_emb.astype(jnp.float32)
  positive = jnp.sum(q * key_emb.astype(jnp.float32), axis=-1, keepdims=True)
  negative = jnp.matmul(q, queue.astype(jnp.float32).T, precision=_PRECISION)
  logits = jnp.concatenate([positive, negative], axis=1) / temperature
  loss = -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, 0])
  metrics = {"accuracy": jnp.mean((jnp.argmax(logits, axis=-1) == 0).astype(jnp.float32)),
             "positive_logit_mean": jnp.mean(logits[:, 0])}
  return loss, metrics


def embedding_std(embeddings: jax.Array) -> jax.Array:
  """The mean over dimensions of each dimension's standard deviation over the batch (ddof 1,
  as `torch.std`): Contriever's `stdq` / `stdk`, near 0 when the embeddings collapse."""
  return jnp.mean(jnp.std(embeddings.astype(jnp.float32), axis=0, ddof=1))


def masked_lm_loss(logits: jax.Array, labels: jax.Array,
                   ignore: int = -100) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Token cross-entropy, the mean over the positions whose label is not `ignore`.

  PyTorch's `CrossEntropyLoss()` (mean reduction, `ignore_index=-100`), as RetroMAE's encoder
  (`BertForMaskedLM`'s loss) and decoder losses. A batch without any label gives 0.

  Args:
    logits: [..., vocab] (any float dtype; computed in float32).
    labels: [...] token ids, `ignore` where there is no loss.

  Returns:
    (loss, metrics): `accuracy` over the labelled positions and `labelled` (their count).
  """
  keep = labels != ignore
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  target = jnp.take_along_axis(log_probs, jnp.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
  count = jnp.sum(keep)
  denominator = jnp.maximum(count, 1).astype(jnp.float32)
  loss = -jnp.sum(jnp.where(keep, target, 0.0)) / denominator
  correct = jnp.sum(keep & (jnp.argmax(logits, axis=-1) == labels))
  return loss, {"accuracy": correct.astype(jnp.float32) / denominator,
                "labelled": count.astype(jnp.float32)}


def pairwise_softmax_loss(pos_scores: jax.Array, neg_scores: jax.Array) -> jax.Array:
  """ColBERT's pairwise softmax cross-entropy over (q, d+, d-...) scores.

  Args:
    pos_scores: [B] score of each query's positive.
    neg_scores: [B, n] scores of its n negatives (n = 1 in the ColBERT paper).

  Returns:
    Float32 scalar: mean over queries of -log softmax([pos, negs])[0].
  """
  scores = jnp.concatenate([pos_scores.astype(jnp.float32)[:, None],
                            neg_scores.astype(jnp.float32)], axis=-1)
  return -jnp.mean(jax.nn.log_softmax(scores, axis=-1)[:, 0])


def kl_distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                         temperature: float = 1.0,
                         student_temperature: float | None = None) -> jax.Array:
  """KL(teacher || student) between softmaxes over the last axis (TCT-ColBERT).

  The teacher's scores are divided by `temperature` before the softmax, the student's by
  `student_temperature` (None: `temperature` too, as in Hinton et al.; TCT-ColBERT tempers
  the teacher only: `student_temperature=1`). The teacher is a constant (stop_gradient):
  only the student learns. No temperature**2 factor is applied (TCT-ColBERT uses the plain
  KL); a caller that wants Hinton's scaling multiplies the result.

  Args:
    student_logits: [..., n] student scores, e.g. [B, P] in-batch dot products.
    teacher_logits: [..., n] teacher scores for the same pairs; -inf marks excluded entries
      (they then have zero teacher probability and contribute nothing).
    temperature: The teacher's softmax temperature (TCT-ColBERT: 0.25).
    student_temperature: The student's (None: `temperature`).

  Returns:
    Float32 scalar: sum over the last axis of p_t * (log p_t - log p_s), mean over all rows.
  """
  teacher_log_probs = jax.nn.log_softmax(
      jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1)
  if student_temperature is None:
    student_temperature = temperature
  student_log_probs = jax.nn.log_softmax(
      student_logits.astype(jnp.float32) / student_temperature, axis=-1)
  teacher_probs = jnp.exp(teacher_log_probs)
  # 0 * log 0 = 0: excluded (-inf) teacher entries would otherwise give 0 * -inf = nan.
  present = teacher_probs > 0
  terms = jnp.where(present,
                    teacher_probs * (jnp.where(present, teacher_log_probs, 0.0)
                                     - jnp.where(present, student_log_probs, 0.0)),
                    0.0)
  return jnp.mean(jnp.sum(terms, axis=-1))


def maxsim_scores(query_vectors: jax.Array, doc_vectors: jax.Array, doc_mask: jax.Array,
                  query_mask: jax.Array | None = None) -> jax.Array:
  """ColBERT's late interaction: for every (query, document), the sum over query tokens of
  the best dot product with any kept document token.

  Args:
    query_vectors: [Q, Lq, d] (L2-normalised: dot products are cosines).
    doc_vectors: [D, Ld, d].
    doc_mask: [D, Ld], 1 on the document tokens that take part (not padding, not
      punctuation); a masked token never wins the max (ColBERTv2's `colbert_score_reduce`
      and PyLate; v1 left zero vectors in the max).
    query_mask: Optional [Q, Lq]: query positions that count (default all: ColBERT's
      [MASK] padding counts).

  Returns:
    float32 [Q, D]; a document with no kept token scores -inf.
  """
  sims = jnp.einsum("qid,pjd->qpij", query_vectors.astype(jnp.float32),
                    doc_vectors.astype(jnp.float32), precision=_PRECISION)
  sims = jnp.where(doc_mask.astype(bool)[None, :, None, :], sims, -jnp.inf)
  best = jnp.max(sims, axis=-1)  # [Q, D, Lq]
  if query_mask is not None:
    best = jnp.where(query_mask.astype(bool)[:, None, :], best, 0.0)
  return jnp.sum(best, axis=-1)


def own_group_scores(scores: jax.Array, group: int) -> jax.Array:
  """[B, G] scores of each query's own passages (positive first) out of [B, B * G] in-batch
  scores in the query-major layout (query i's passages are columns i * G ... i * G + G - 1)."""
  rows = jnp.arange(scores.shape[0])
  columns = rows[:, None] * group + jnp.arange(group)[None, :]
  return scores[rows[:, None], columns]


LATE_INTERACTION_LOSSES = ("pairwise", "nway_in_batch", "in_batch")


def late_interaction_loss(scores: jax.Array, group: int, mode: str
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """ColBERT's training losses over MaxSim scores of the global batch.

  Args:
    scores: [B, B * G] MaxSim scores of every query against every passage of the batch,
      query-major: query i's positive is column i * G, its hard negatives the next G - 1.
    group: G, passages per query (1 positive + G - 1 hard negatives).
    mode: `pairwise` (ColBERT v1: softmax over the query's own positive and negatives, a
      2-way softmax with one BM25 negative); `nway_in_batch` (ColBERTv2 with
      `use_ib_negatives`: that loss plus a softmax over every passage of the batch except the
      query's own negatives); `in_batch` (PyLate's `Contrastive`: one softmax over every
      passage of the batch, the query's own negatives included).

  Returns:
    (loss, metrics): float32 scalars; `accuracy` is the share of queries whose positive
    scores highest among their own passages.
  """
  if mode not in LATE_INTERACTION_LOSSES:
    raise ValueError(f"loss.type={mode!r} is not one of {LATE_INTERACTION_LOSSES}")
  own = own_group_scores(scores, group)
  own_log_probs = jax.nn.log_softmax(own, axis=-1)
  rows = jnp.arange(scores.shape[0])
  positive = rows * group
  own_loss = -jnp.mean(own_log_probs[:, 0])
  in_batch = scores
  if mode == "nway_in_batch":
    column = jnp.arange(scores.shape[1])[None, :]
    own_negative = (column // group == rows[:, None]) & (column % group != 0)
    in_batch = jnp.where(own_negative, -jnp.inf, scores)
  in_batch_loss = -jnp.mean(jax.nn.log_softmax(in_batch, axis=-1)[rows, positive])
  loss = {"pairwise": own_loss, "nway_in_batch": own_loss + in_batch_loss,
          "in_batch": in_batch_loss}[mode]
  metrics = {
      "accuracy": jnp.mean((jnp.argmax(own, axis=-1) == 0).astype(jnp.float32)),
      "positive_logit_mean": jnp.mean(own[:, 0]),
  }
  return loss, metrics


# --- SG-OPT / SG (Kim, Yoo & Lee, ACL 2021, arXiv 2106.07345; code: galsang/SG-BERT) -------------

# torch.nn.CosineSimilarity's default eps: each vector's norm is clamped below at eps.
_COSINE_EPS = 1e-8


def _unit(x: jax.Array, eps: float = _COSINE_EPS) -> jax.Array:
  """x / max(||x||, eps) over the last axis, in float32 (torch's `cosine_similarity` clamps
  each norm at eps). sqrt(max(|x|^2, eps^2)) is the same value with a finite gradient at 0."""
  x = x.astype(jnp.float32)
  squared = jnp.sum(x * x, axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(squared, eps * eps))


def sg_opt_loss(anchors: jax.Array, views: jax.Array, temperature: float
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SG-OPT's redesigned NT-Xent: every layer's view a positive of its sentence's anchor.

  Self-Guided Contrastive Learning (Kim, Yoo & Lee, ACL 2021), Sec. 3.2, the final objective
  (L^opt3) and the released code's `NTXentLoss` (`loss.py`, used for `--obj SG-OPT`). With
  g the cosine similarity, c_i the (projected) anchor of sentence i and h_{i,k} its (projected)
  view from layer k, one row per (sentence i, layer k):

    loss_{i,k} = -log  exp(g(c_i, h_{i,k}) / t)
                       / (exp(g(c_i, h_{i,k}) / t) + sum_{j != i} sum_{n} exp(g(c_i, h_{j,n}) / t))

  and the loss is the mean of the B * L rows (the code's `CrossEntropyLoss(reduction="sum")`
  divided by `batch_size * num_layers`). Relative to SimCLR's NT-Xent (`nt_xent_loss`) the
  views are never anchors and the anchors are never negatives (no c_i <-> c_j terms: the code
  has them commented out); the other layers of sentence i are neither positives of row (i, k)
  nor negatives; the negatives of sentence i, the views of every layer of every other
  sentence, are shared by its L rows.

  Only [B, B, L] similarities are formed (one logsumexp over the negatives per sentence), never
  the code's [B * L, 1 + (B - 1) * L] logits. B >= 2 (with B = 1 there are no negatives).

  Args:
    anchors: [B, D] anchors c_i: the projected final-layer [CLS] of the tuned BERT.
    views: [B, L, D] views h_{i,k}: the projected masked-mean hidden states of every layer
      (embedding output included) of the fixed BERT.
    temperature: t (0.01 in the paper and the code's default `--T`).

  Returns:
    (loss, metrics): float32 scalars; `accuracy` is the share of the B * L rows whose positive
    has the largest logit (ties count as correct, as argmax with the positive first), and
    `positive_cosine_mean` the mean of g(c_i, h_{i,k}).
  """
  if (anchors.ndim != 2 or views.ndim != 3
      or views.shape[0] != anchors.shape[0] or views.shape[2] != anchors.shape[1]):
    raise ValueError(f"anchors {anchors.shape} and views {views.shape} are not [B, D] and "
                     "[B, L, D]")
  num_sentences = anchors.shape[0]
  cosines = jnp.einsum("id,jkd->ijk", _unit(anchors), _unit(views),
                       precision=_PRECISION)  # [B, B, L]: g(c_i, h_{j,k})
  logits = cosines / temperature
  rows = jnp.arange(num_sentences)
  positive = logits[rows, rows]  # [B, L]
  other = (rows[:, None] != rows[None, :])[:, :, None]  # [B, B, 1]: j != i
  negatives = jnp.where(other, logits, -jnp.inf)
  negative_lse = jax.nn.logsumexp(negatives, axis=(1, 2))  # [B]
  row_loss = jnp.logaddexp(positive, negative_lse[:, None]) - positive  # [B, L]
  hardest_negative = jnp.max(negatives, axis=(1, 2))  # [B]
  metrics = {
      "accuracy": jnp.mean((positive >= hardest_negative[:, None]).astype(jnp.float32)),
      "positive_cosine_mean": jnp.mean(cosines[rows, rows]),
  }
  return jnp.mean(row_loss), metrics


def nt_xent_loss(anchors: jax.Array, views: jax.Array, temperature: float
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SimCLR's NT-Xent with cosine similarity: the objective of plain SG.

  Self-Guided Contrastive Learning (Kim, Yoo & Lee, ACL 2021), Sec. 3.1, L^base (the code's
  `NTXentLossOriginal`, used for `--obj SG`). Over the 2B vectors x = [h_1..h_B; c_1..c_B]
  (one view per sentence: in SG a layer sampled uniformly per sentence, by the caller), each
  vector x_m is an anchor whose positive is its partner mu(x_m) (c_i <-> h_i):

    loss_m = -log exp(g(x_m, mu(x_m)) / t) / sum_{k != m} exp(g(x_m, x_k) / t)

  and the loss is the mean over the 2B rows, as the paper's 1 / (2b) sum. The released
  `NTXentLossOriginal.forward` cannot run as written: it builds 2B logit rows but passes
  `labels = torch.zeros(batch_size)` (B labels), which `CrossEntropyLoss` rejects; with 2B
  labels its `sum / batch_size` would be twice this mean. This follows the paper's equation.

  Args:
    anchors: [B, D] anchors c_i (projected [CLS] of the tuned BERT).
    views: [B, D] the view h_i of each sentence (projected pooled layer of the fixed BERT).
    temperature: t.

  Returns:
    (loss, metrics): float32 scalars; `accuracy` over the 2B rows (the partner has the largest
    logit, ties counting as correct) and `positive_cosine_mean`, the mean of g(c_i, h_i).
  """
  if anchors.ndim != 2 or anchors.shape != views.shape:
    raise ValueError(f"anchors {anchors.shape} and views {views.shape} are not both [B, D]")
  num_sentences = anchors.shape[0]
  vectors = jnp.concatenate([_unit(views), _unit(anchors)], axis=0)  # [2B, D], as the code
  cosines = jnp.matmul(vectors, vectors.T, precision=_PRECISION)  # [2B, 2B]
  index = jnp.arange(2 * num_sentences)
  partner = (index + num_sentences) % (2 * num_sentences)
  logits = jnp.where(index[:, None] == index[None, :], -jnp.inf, cosines / temperature)
  positive = logits[index, partner]
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - positive)
  metrics = {
      "accuracy": jnp.mean((positive >= jnp.max(logits, axis=-1)).astype(jnp.float32)),
      "positive_cosine_mean": jnp.mean(cosines[index[:num_sentences], partner[:num_sentences]]),
  }
  return loss, metrics


def squared_distance(tree_a: Any, tree_b: Any) -> jax.Array:
  """sum over all leaves of ||a - b||_2^2, in float32: SG's regulariser ||theta_T - theta_F||^2.

  As SG-BERT's `Loss.compute_diff` (sum over the encoder's parameters of
  `torch.norm(theta_F - theta_T, p=2) ** 2`, i.e. the sum of squared differences; the weight
  lambda = 0.1 multiplies it outside). The two trees must have the same structure and shapes;
  the frozen copy (theta_F) is the caller's constant (the code gives it no gradient). An empty
  tree gives 0.
  """
  def leaf(a, b):
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape:
      raise ValueError(f"leaves of shapes {a.shape} and {b.shape} differ")
    return jnp.sum(jnp.square(a - b))

  differences = jax.tree_util.tree_map(leaf, tree_a, tree_b)
  return sum(jax.tree_util.tree_leaves(differences), jnp.zeros((), jnp.float32))
