"""Fine-tuning two towers on ReQA SQuAD question -> answer-sentence pairs (Chang et al. 2020).

The training questions are those of a seeded `data.train_fraction` of the SQuAD articles
(`data.reqa.split_by_article`: nested, so 1% ⊂ 5% ⊂ 80%); each question's positive is the
(sentence, context) candidate holding its answer, read as `reqa.candidate_text`; the other
rows of the batch are its negatives (`recipes.two_tower`). `config.init` starts from a
pre-training run (`recipes.chang`). The held-back questions are the `reqa` evaluator's.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np

from retrieval_jax.data import pairs
from retrieval_jax.data import reqa as reqa_data
from retrieval_jax.recipes import contrastive, two_tower

logger = logging.getLogger(__name__)


def training_pairs(data: reqa_data.ReqaData, train_fraction: float,
                   seed: int) -> pairs.PairDataset:
  """The train articles' questions with their answer candidates' documents as positives.

  Raises:
    ValueError: Naming `data.train_fraction` when it is outside (0, 1).
  """
  try:
    train_articles, _ = reqa_data.split_by_article(data.num_articles, train_fraction, seed)
  except ValueError as e:
    raise ValueError(f"data.train_fraction: {e}") from None
  chosen = data.fine_tuning_pairs(train_articles)
  rows: dict[int, int] = {}
  positives: dict[str, list[int]] = {}
  texts: dict[str, str] = {}
  documents: list[str] = []
  for pair in chosen:
    if pair.candidate not in rows:
      rows[pair.candidate] = len(documents)
      documents.append(pair.document)
    positives.setdefault(pair.question_id, []).append(rows[pair.candidate])
    texts[pair.question_id] = pair.query
  ids = list(positives)
  return pairs.PairDataset(query_ids=ids, query_texts=[texts[q] for q in ids],
                           positives=[np.unique(positives[q]).astype(np.int64) for q in ids],
                           doc_texts=documents, query_rows=np.arange(len(ids), dtype=np.int64))


def total_steps(config: Any, steps_per_epoch: int) -> int:
  """`contrastive.total_steps`, capped at `train.max_steps` when that is set (the `cpu`
  budget: the 80% split's epoch is longer than it)."""
  steps = contrastive.total_steps(config, steps_per_epoch)
  cap = config.train.get("max_steps")
  return steps if cap is None else min(steps, int(cap))


def build(config: Any, workdir, mesh: jax.sharding.Mesh):
  facts = {}

  def make_batcher(spec, tokenizer):
    del spec
    data = reqa_data.load_reqa(config.data.squad, str(config.data.get("split", "train")))
    dataset = training_pairs(data, float(config.data.train_fraction), int(config.data.split_seed))
    facts.update(train_fraction=float(config.data.train_fraction),
                 train_questions=len(dataset.query_ids), train_documents=len(dataset.doc_texts))
    logger.info("reqa: %d training questions (%.0f%% of the articles)", len(dataset.query_ids),
                100 * float(config.data.train_fraction))
    query_length = int(config.train.query_max_length)
    passage_length = int(config.train.passage_max_length)
    return pairs.PairBatcher(
        dataset, tokenizer, global_batch=int(config.train.batch_size), num_negatives=0,
        query_max_length=query_length, passage_max_length=passage_length,
        seed=int(config.seed), process_index=jax.process_index(),
        process_count=jax.process_count(),
        pad_to_multiple_of=int(config.train.pad_to_multiple_of),
        lengths=contrastive.shared_token_lengths(config, dataset, tokenizer, query_length,
                                                 passage_length))

  return two_tower.build(config, workdir, mesh, name="reqa", make_batcher=make_batcher,
                         steps_of=lambda b: total_steps(config, b.steps_per_epoch), info=facts)


restore_eval_models = two_tower.restore_eval_models
