"""Chang et al. 2020: two-tower pre-training on ICT, BFS and WLP pairs from articles with links.

Pairs come from `data.chang_pairs` over `config.data.articles` (`data.article_sources`); the
model and step are `recipes.two_tower`'s. `data.tasks` weighs the tasks (`{"ict": 1}` alone,
or all three for the paper's mix). The checkpoint is what `configs/reqa.py` fine-tunes with
`--config.init=<this workdir>`.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import tqdm

from retrieval_jax.data import article_sources, chang_pairs
from retrieval_jax.recipes import contrastive, two_tower

logger = logging.getLogger(__name__)


def pair_settings(data: Any) -> chang_pairs.PairSettings:
  """The tasks and document format of `config.data` (errors name `data.*`)."""
  try:
    return chang_pairs.PairSettings(
        weights={str(k): float(v) for k, v in dict(data.tasks).items()},
        title=bool(data.title), bfs_other_passage=bool(data.bfs_other_passage),
        wlp_passage=str(data.wlp_passage))
  except ValueError as e:
    raise ValueError(f"data.tasks / data.wlp_passage: {e}") from None


def _tokenize(tokenizer, progress: bool):
  def tokenize(texts):
    ids = []
    with tqdm.tqdm(total=len(texts), desc="tokenizing sentences", unit=" texts", delay=2.0,
                   disable=not progress) as bar:
      for start in range(0, len(texts), 4096):  # bounded memory per call
        ids.extend(tokenizer(list(texts[start:start + 4096]), add_special_tokens=False,
                             truncation=False, verbose=False)["input_ids"])
        bar.update(min(4096, len(texts) - start))
    return ids
  return tokenize


def build(config: Any, workdir, mesh: jax.sharding.Mesh):
  settings = pair_settings(config.data)
  facts = {}

  def make_batcher(spec, tokenizer):
    del spec
    logger.info("chang: reading the articles of %s", config.data.articles)
    articles = article_sources.load_articles(
        config.data.articles, splitter=str(config.data.splitter),
        tfds_dir=config.data.get("tfds_dir"))
    progress = bool(config.train.get("progress", True)) and jax.process_index() == 0
    index = chang_pairs.ArticleIndex(articles, _tokenize(tokenizer, progress),
                                     wlp_passage=settings.wlp_passage,
                                     bfs_other_passage=settings.bfs_other_passage)
    # A task asked for with nothing to draw is an error before compiling, not at step 0.
    chang_pairs.draw_pairs(index, settings, int(config.seed), 0, 1)
    facts.update(articles=index.num_articles, sentences=index.num_sentences,
                 anchors=index.available(), tasks=dict(settings.weights))
    logger.info("chang: %d articles, %d sentences; anchors per task %s", index.num_articles,
                index.num_sentences, index.available())
    return chang_pairs.ChangPairBatcher(
        index, settings, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
        pad_id=tokenizer.pad_token_id, global_batch=int(config.train.batch_size),
        query_max_length=int(config.train.query_max_length),
        doc_max_length=int(config.train.passage_max_length), seed=int(config.seed),
        process_index=jax.process_index(), process_count=jax.process_count(),
        pad_to_multiple_of=int(config.train.pad_to_multiple_of))

  return two_tower.build(config, workdir, mesh, name="chang", make_batcher=make_batcher,
                         steps_of=lambda b: contrastive.total_steps(config, b.steps_per_epoch),
                         info=facts)


restore_eval_models = two_tower.restore_eval_models
