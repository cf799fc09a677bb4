"""Training throughput: our jitted dual-encoder step against sentence-transformers' MNRL.

Both sides train the same checkpoint (shared towers, mean pooling + L2, dropout on) with an
in-batch softmax at scale 20 over (query, positive, one hard negative) triples: ours is
`recipes.dual_encoder.train_step` (AdamW + global-norm clipping via `optim.make_optimizer`),
theirs `MultipleNegativesRankingLoss` with `torch.optim.AdamW` + `clip_grad_norm_`, the defaults
of `SentenceTransformer.fit`. The same texts, batch size and token caps go to both.

The texts are SciFact's `train_minus_dev` queries, one judged positive each and one BM25 hard
negative (DPR's layout, as `recipes.dpr` builds it), or the in-memory synthetic data set when
SciFact is not found (`--data=synthetic` asks for it). Each round trains `--steps` batches, the
same batches every round; before timing, each side runs every one of them once untimed (at least
`--warmup_steps` iterations), so every padded shape we compile is compiled before the clock runs
and PyTorch's allocator and thread pool are warm. Rounds alternate the two sides in ABBA order
(ours, reference, reference, ours, ...) so load from other processes hits both alike.

A timed iteration is the whole path from texts to updated parameters, as a training loop runs it:
  ours: `pairs.PairBatcher.batch` (tokenise, pad to the batch's longest rounded up to `--pad_to_multiple_of`) ->
    global device arrays -> the jitted step -> `jax.block_until_ready` on the new state;
  reference: `model.preprocess` of the three columns (padded to each column's longest) ->
    MNRL forward -> backward -> clipping -> `optimizer.step()` -> `zero_grad()`.
Our batches are built one after the other, without `PairBatcher.iterate`'s prefetch thread, so
the per-iteration split into host preparation and compute is measurable (and the prefetch,
which the real loop has, is not credited to us).

Results: `ours_examples_per_s` and `reference_examples_per_s` are examples (queries) per second
from the median round, `ratio` = ours / reference. On a shared machine also read
`ratio_paired_median` (median over rounds of the back-to-back timings' ratio) and `ratio_best`
(fastest round of each). `loss_*_no_dropout` are both sides' loss on the first batch with the
initial weights and dropout off, which must agree to ~1e-4 (a check that both train the same
objective on the same texts).

Usage:
  python eval/bench_train.py --out=/tmp/bench_train.json
  python -m eval.bench_train --batch_size=32 --rounds=6

The benchmark uses whatever devices JAX has; it never forces fake host devices. XLA:CPU options go
in the environment (`XLA_FLAGS=...`), because XLA reads them once, when JAX starts.
The process runs on the C heap `--malloc` picks, as `main.py` does (default: tcmalloc
preloaded when installed; `--malloc=system` for glibc's malloc): both sides share it, and the
JSON's `environment.malloc` says which.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import statistics
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import numpy as np

from eval import bench_harness
from retrieval_jax import host_malloc

FLAGS = flags.FLAGS
SCALE = 20.0           # MNRL's default scale (= 1 / temperature on cosine similarities)
LR = 2e-5              # `SentenceTransformer.fit`'s default learning rate
WEIGHT_DECAY = 0.01    # its (and torch AdamW's) default weight decay
MAX_GRAD_NORM = 1.0    # its default clipping
DROPOUT = 0.1          # all-MiniLM-L6-v2's (and BERT's) hidden and attention dropout
# Far beyond any run here: the linear decay then keeps the rate at ~LR, on both sides.
SCHEDULE_STEPS = 1_000_000


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags on `flag_values`.

  Not at import: `tests/` imports this module beside other CLIs that define `--out`, `--data`
  and `--model` on the global flags (absl rejects a flag defined by two modules).
  """
  flags.DEFINE_string("out", None, "Write the results as JSON to this file.",
                      flag_values=flag_values)
  flags.DEFINE_string(
      "data", None, "BEIR SciFact directory, or `synthetic` (default: SciFact from "
      "$RETRIEVAL_JAX_DATA or ../shared/data, else the synthetic data set).",
      flag_values=flag_values)
  flags.DEFINE_string("model", "minilm", "sentence-transformers directory, hub id or `minilm` "
                      "(the packaged all-MiniLM-L6-v2).", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 16, "Queries per step (each with a positive and a hard "
                       "negative), the same for both sides.", flag_values=flag_values)
  flags.DEFINE_integer("query_max_length", 64, "Query token cap, special tokens included.",
                       flag_values=flag_values)
  flags.DEFINE_integer("passage_max_length", 128, "Passage token cap, special tokens included.",
                       flag_values=flag_values)
  flags.DEFINE_integer("pad_to_multiple_of", 16, "Our padded lengths are multiples of this "
                       "(configs/dpr.py:cpu uses 16; sentence-transformers pads to the longest).",
                       flag_values=flag_values)
  flags.DEFINE_integer("steps", 5, "Timed training steps per side and round (distinct batches).",
                       flag_values=flag_values)
  flags.DEFINE_integer("rounds", 4, "Timed rounds (ABBA order).", flag_values=flag_values)
  flags.DEFINE_integer("warmup_steps", 2, "Minimum untimed steps per side before timing; every "
                       "timed batch is run once untimed in any case.", flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of the batch order, negatives, dropout.",
                       flag_values=flag_values)
  host_malloc.define_flag(flag_values)


def load_split(data: str | None):
  """(BeirData of the training split, description): SciFact if found, else synthetic."""
  from retrieval_jax.data import beir, paths, synthetic  # pylint: disable=g-import-not-at-top

  if data == "synthetic":
    return synthetic.synthetic_beir("train_minus_dev"), "synthetic"
  root = paths.find_dataset(data or "scifact")
  if root is None:
    if data:
      raise app.UsageError(f"--data={data}: not a directory, nor a data set under "
                           f"{', '.join(map(str, paths.search_roots()))}")
    logging.warning("SciFact not found under %s; using the synthetic data set",
                    ", ".join(map(str, paths.search_roots())))
    return synthetic.synthetic_beir("train_minus_dev"), "synthetic"
  return beir.load_beir(root, "train_minus_dev", use_tfds=False), str(root)


@dataclasses.dataclass(frozen=True)
class _Triples:
  """The texts of one batch, the same for both sides."""
  queries: list[str]
  positives: list[str]
  negatives: list[str]


def make_batcher(data, tokenizer, *, batch_size: int, query_max_length: int,
                 passage_max_length: int, seed: int, pad_to_multiple_of: int = 16):
  """A `PairBatcher` of (query, its first positive, one BM25 negative), and a text lookup.

  One positive per query (the first judged one) so a batch's texts follow from its
  `example_index` alone, for the reference side.
  """
  from retrieval_jax.data import pairs  # pylint: disable=g-import-not-at-top
  from retrieval_jax.index import mining  # pylint: disable=g-import-not-at-top

  dataset = pairs.pairs_from_beir(data)
  dataset = dataclasses.replace(dataset, positives=[p[:1] for p in dataset.positives])
  pool = mining.bm25_negative_pool(data, depth=10)
  negatives = {}

  def negatives_for_epoch(epoch: int) -> np.ndarray:
    if epoch not in negatives:  # DPR's choice: the best-ranked non-positive.
      negatives[epoch] = mining.sample_negatives(pool, 1, seed=seed, epoch=epoch,
                                                 top_k=1)[dataset.query_rows]
    return negatives[epoch]

  batcher = pairs.PairBatcher(
      dataset, tokenizer, global_batch=batch_size, num_negatives=1,
      negatives_fn=negatives_for_epoch, query_max_length=query_max_length,
      passage_max_length=passage_max_length, seed=seed, pad_to_multiple_of=pad_to_multiple_of)

  def texts(step: int, example_index: np.ndarray) -> _Triples:
    epoch, _ = pairs.step_position(step, batcher.steps_per_epoch)
    negative = negatives_for_epoch(epoch)
    return _Triples(
        queries=[dataset.query_texts[i] for i in example_index],
        positives=[dataset.doc_texts[dataset.positives[i][0]] for i in example_index],
        negatives=[dataset.doc_texts[negative[i, 0]] for i in example_index])

  return batcher, texts


def _model_config(model: str):
  """`config.model` of a training config (configs/common.py) for the benchmarked encoder."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(dict(
      name=model, pooling="mean", normalize="true", dtype="float32", shared_towers=True,
      dropout=DROPOUT, remat=False, tokenizer=None))


class _Ours:
  """Our side: `PairBatcher` batches into the jitted, donated train step on the real devices."""

  def __init__(self, spec, batcher, seed: int):
    import jax  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top

    from retrieval_jax import optim, sharding  # pylint: disable=g-import-not-at-top
    from retrieval_jax.models.encoder import TextEncoder  # pylint: disable=g-import-not-at-top
    from retrieval_jax.recipes import dual_encoder  # pylint: disable=g-import-not-at-top

    self.batcher = batcher
    dual = dual_encoder.DualEncoder(TextEncoder(spec.encoder, spec.pooling), shared=True)
    tx = optim.make_optimizer(lr=LR, total_steps=SCHEDULE_STEPS, warmup_steps=0,
                              weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM)
    self.mesh = sharding.make_mesh(-1, 1)
    shardings = dual_encoder.state_shardings(dual, tx, self.mesh)
    params = dual_encoder.initial_tower_params(spec, seed)
    self.state = dual_encoder.init_state(dual, tx, params, seed, shardings)
    loss_config = ml_collections.ConfigDict(dict(
        scale=SCALE, symmetric=False, grad_cache=False, chunk_size=batcher.global_batch))
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    step = functools.partial(dual_encoder.train_step, dual=dual, tx=tx,
                             schedule=optim.make_schedule(LR, SCHEDULE_STEPS),
                             loss_config=loss_config)
    self._step = jax.jit(step, in_shardings=(shardings, {}, self.batch_sharding),
                         out_shardings=(shardings, sharding.replicated(self.mesh)),
                         donate_argnums=0)
    # Only the loss is returned, so XLA drops the backward pass from this one.
    self._loss_no_dropout = jax.jit(
        lambda params, batch: dual_encoder.contrastive_loss_and_grads(
            dual, loss_config, params, batch, None)[0][0],
        in_shardings=(shardings["params"], self.batch_sharding))

  def _device_batch(self, host: dict[str, np.ndarray]):
    from retrieval_jax import train  # pylint: disable=g-import-not-at-top

    # As the training loop does.
    return train.global_batch(host, self.batch_sharding, self.batcher.host_keys)

  def loss_no_dropout(self, step: int) -> float:
    """The loss on batch `step` with the current weights and dropout off."""
    return float(self._loss_no_dropout(self.state["params"],
                                       self._device_batch(self.batcher.batch(step))))

  def train(self, step: int) -> tuple[float, float, Any]:
    """One training iteration: (host preparation seconds, total seconds, metrics)."""
    import jax  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    batch = self._device_batch(self.batcher.batch(step))
    prepared = time.perf_counter()
    self.state, metrics = self._step(self.state, {}, batch)
    jax.block_until_ready((self.state, metrics))
    return prepared - start, time.perf_counter() - start, metrics


class _Reference:
  """sentence-transformers: `preprocess` -> MNRL -> backward -> clip -> AdamW, as its trainer."""

  def __init__(self, model_dir: pathlib.Path, query_max_length: int, passage_max_length: int,
               seed: int):
    import sentence_transformers  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    try:
      from sentence_transformers.sentence_transformer.losses import (  # pylint: disable=g-import-not-at-top
          MultipleNegativesRankingLoss)
    except ImportError:  # sentence-transformers < 6
      from sentence_transformers.losses import (  # pylint: disable=g-import-not-at-top
          MultipleNegativesRankingLoss)

    torch.manual_seed(seed)
    self.torch = torch
    self.model = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    self.query_max_length, self.passage_max_length = query_max_length, passage_max_length
    self.model.max_seq_length = passage_max_length
    self.loss = MultipleNegativesRankingLoss(self.model, scale=SCALE)  # cosine similarity
    # `fit`'s decay groups (as our `optim.decay_mask`): none on biases and LayerNorm weights.
    decay, no_decay = [], []
    for name, param in self.model.named_parameters():
      (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                        {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    self.scheduler = torch.optim.lr_scheduler.LambdaLR(
        self.optimizer, lambda step: max(0.0, 1.0 - step / SCHEDULE_STEPS))
    self.model.train()
    config = getattr(getattr(self.model[0], "auto_model", None), "config", None)
    self.dropout = {key: getattr(config, key, None)
                    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob")}

  def _preprocess(self, texts: Sequence[str], max_length: int) -> dict:
    self.model.max_seq_length = max_length
    try:
      preprocess = self.model.preprocess
    except AttributeError:  # sentence-transformers < 6
      preprocess = self.model.tokenize
    return preprocess(list(texts))

  def features(self, batch: _Triples) -> list[dict]:
    """The three columns tokenised, queries truncated to the query cap."""
    return [self._preprocess(batch.queries, self.query_max_length),
            self._preprocess(batch.positives, self.passage_max_length),
            self._preprocess(batch.negatives, self.passage_max_length)]

  def loss_no_dropout(self, batch: _Triples) -> float:
    self.model.eval()
    try:
      with self.torch.no_grad():
        return float(self.loss(self.features(batch), None))
    finally:
      self.model.train()

  def train(self, batch: _Triples) -> tuple[float, float, float]:
    """One training iteration: (tokenisation seconds, total seconds, loss)."""
    start = time.perf_counter()
    features = self.features(batch)
    prepared = time.perf_counter()
    loss = self.loss(features, None)
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
    self.optimizer.step()
    self.scheduler.step()
    self.optimizer.zero_grad()
    return prepared - start, time.perf_counter() - start, float(loss.detach())


def run(*, model: str = "minilm", data: str | None = None, batch_size: int = 16,
        query_max_length: int = 64, passage_max_length: int = 128, steps: int = 5,
        rounds: int = 4, warmup_steps: int = 2, seed: int = 0,
        pad_to_multiple_of: int = 16) -> dict[str, Any]:
  """Runs the benchmark and returns the results dictionary (see the module docstring)."""
  if min(batch_size, steps, rounds) < 1 or warmup_steps < 0:
    raise app.UsageError("--batch_size, --steps, --rounds must be >= 1, --warmup_steps >= 0")
  if min(query_max_length, passage_max_length) < 2:
    raise app.UsageError("--query_max_length and --passage_max_length must be >= 2")
  import jax  # pylint: disable=g-import-not-at-top

  from eval import compile_clock  # pylint: disable=g-import-not-at-top
  import sentence_transformers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from retrieval_jax.data import tokenize as tok  # pylint: disable=g-import-not-at-top

  devices = jax.device_count()
  if batch_size % devices:
    raise app.UsageError(f"--batch_size={batch_size} must be divisible by the {devices} devices")
  load_start = os.getloadavg()[0]
  split, data_desc = load_split(data)

  from retrieval_jax.recipes import dual_encoder  # pylint: disable=g-import-not-at-top
  spec = dual_encoder.model_spec(_model_config(model))
  if spec.model_dir is None:
    raise app.UsageError(f"--model={model}: sentence-transformers needs a checkpoint directory")
  if max(query_max_length, passage_max_length) > spec.encoder.max_position_embeddings:
    raise app.UsageError(f"token caps must be at most the model's "
                         f"{spec.encoder.max_position_embeddings} positions")
  tokenizer = tok.load_tokenizer(spec.tokenizer_dir)
  batcher, texts_of = make_batcher(split, tokenizer, batch_size=batch_size,
                                   query_max_length=query_max_length,
                                   passage_max_length=passage_max_length, seed=seed,
                                   pad_to_multiple_of=pad_to_multiple_of)
  ours = _Ours(spec, batcher, seed)
  # The timed batches, and their texts for the reference side (untimed).
  batches, shapes, real_tokens = [], [], []
  for step in range(steps):
    host = batcher.batch(step)
    batches.append(texts_of(step, host["example_index"]))
    shapes.append([host["query_input_ids"].shape[1], host["passage_input_ids"].shape[2]])
    real_tokens.append([int(host["query_attention_mask"].sum()),
                        int(host["passage_attention_mask"].sum())])
  loss_ours_no_dropout = ours.loss_no_dropout(0)

  warmup = [step % steps for step in range(max(warmup_steps, steps))]
  with compile_clock.CompileClock() as warmup_compiles:
    start = time.perf_counter()
    first_ours = [ours.train(step)[2] for step in warmup][0]
    ours_warmup_s = time.perf_counter() - start

  reference = _Reference(spec.model_dir, query_max_length, passage_max_length, seed)
  loss_reference_no_dropout = reference.loss_no_dropout(batches[0])
  reference_shapes = [[int(f["input_ids"].shape[1]) for f in reference.features(b)]
                      for b in batches]
  start = time.perf_counter()
  first_reference = [reference.train(batches[step])[2] for step in warmup][0]
  reference_warmup_s = time.perf_counter() - start

  sides = {"ours": lambda step: ours.train(step)[:2],
           "reference": lambda step: reference.train(batches[step])[:2]}
  with compile_clock.CompileClock() as timed_compiles:
    seconds, timings = bench_harness.alternate(
        {name: lambda side=side: [side(step) for step in range(steps)]
         for name, side in sides.items()}, rounds)
  prepare = {name: [sum(p for p, _ in steps_) for steps_ in per_round]
             for name, per_round in timings.items()}

  examples = steps * batch_size
  ours_rate = examples / statistics.median(seconds["ours"])
  reference_rate = examples / statistics.median(seconds["reference"])
  return dict(
      ours_examples_per_s=ours_rate, reference_examples_per_s=reference_rate,
      **bench_harness.speed_ratio(seconds["ours"], seconds["reference"]),
      ours_examples_per_s_best=examples / min(seconds["ours"]),
      reference_examples_per_s_best=examples / min(seconds["reference"]),
      ours_seconds=seconds["ours"], reference_seconds=seconds["reference"],
      # Host-side batch preparation (tokenisation, padding, device arrays) within those seconds.
      ours_prepare_seconds=prepare["ours"], reference_tokenize_seconds=prepare["reference"],
      ours_ms_per_step=1e3 * statistics.median(seconds["ours"]) / steps,
      reference_ms_per_step=1e3 * statistics.median(seconds["reference"]) / steps,
      ours_prepare_ms_per_step=1e3 * statistics.median(prepare["ours"]) / steps,
      reference_tokenize_ms_per_step=1e3 * statistics.median(prepare["reference"]) / steps,
      loss_ours_no_dropout=loss_ours_no_dropout,
      loss_reference_no_dropout=loss_reference_no_dropout,
      loss_abs_diff_no_dropout=abs(loss_ours_no_dropout - loss_reference_no_dropout),
      loss_ours_first_step=float(first_ours["loss"]), loss_reference_first_step=first_reference,
      ours_warmup_s=ours_warmup_s, reference_warmup_s=reference_warmup_s,
      ours_compile_s=warmup_compiles.seconds, ours_compiles=warmup_compiles.compiles,
      ours_compiles_timed=timed_compiles.compiles, warmup_iterations=len(warmup),
      batch_size=batch_size, num_negatives=1, query_max_length=query_max_length,
      passage_max_length=passage_max_length, pad_to_multiple_of=pad_to_multiple_of, steps=steps,
      rounds=rounds, seed=seed,
      scale=SCALE, lr=LR, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
      dropout_ours=DROPOUT, dropout_reference=reference.dropout,
      ours_batch_shapes=shapes, reference_batch_widths=reference_shapes,
      # Real (unpadded) query and passage tokens per batch.
      real_tokens=real_tokens, devices=devices, platform=jax.default_backend(),
      jax_version=jax.__version__, torch_version=torch.__version__,
      sentence_transformers_version=sentence_transformers.__version__,
      torch_threads=torch.get_num_threads(), torch_interop_threads=torch.get_num_interop_threads(),
      cpu=bench_harness.cpu_model(), environment=bench_harness.environment(),
      loadavg_start=load_start, loadavg_end=os.getloadavg()[0],
      xla_flags=os.environ.get("XLA_FLAGS", ""), model_dir=str(spec.model_dir), data=data_desc,
      train_queries=len(batcher.dataset.query_ids))


def format_table(result: dict[str, Any]) -> str:
  """A human-readable summary of `run`'s result."""
  def row(name, rate, best, ms, prep_ms, warmup, first_loss, loss):
    return (f"{name:22}{rate:>10.2f}{best:>9.2f}{ms:>9.0f}{prep_ms:>9.1f}{warmup:>10.1f}"
            f"{first_loss:>10.4f}{loss:>14.6f}")

  return "\n".join([
      bench_harness.cpu_line(result["environment"]["cpu"]),
      f"batch {result['batch_size']} (+1 positive, 1 negative each), query/passage max length "
      f"{result['query_max_length']}/{result['passage_max_length']}, {result['steps']} steps x "
      f"{result['rounds']} rounds; {result['devices']} {result['platform']} device(s), torch "
      f"threads {result['torch_threads']}; load {result['loadavg_start']:.1f}->"
      f"{result['loadavg_end']:.1f}; data {pathlib.Path(result['data']).name}",
      f"{'':22}{'examples/s':>10}{'best':>9}{'ms/step':>9}{'prep ms':>9}{'warm-up s':>10}"
      f"{'loss@1':>10}{'loss no-drop':>14}",
      row("ours (JAX)", result["ours_examples_per_s"], result["ours_examples_per_s_best"],
          result["ours_ms_per_step"], result["ours_prepare_ms_per_step"], result["ours_warmup_s"],
          result["loss_ours_first_step"], result["loss_ours_no_dropout"]),
      row("sentence-transformers", result["reference_examples_per_s"],
          result["reference_examples_per_s_best"], result["reference_ms_per_step"],
          result["reference_tokenize_ms_per_step"], result["reference_warmup_s"],
          result["loss_reference_first_step"], result["loss_reference_no_dropout"]),
      f"ratio ours/reference {result['ratio']:.3f} (paired median "
      f"{result['ratio_paired_median']:.3f}, best {result['ratio_best']:.3f}; per round "
      f"{', '.join(f'{r:.3f}' for r in result['ratio_per_round'])}); |loss diff| no dropout "
      f"{result['loss_abs_diff_no_dropout']:.1e}",
      f"our compile {result['ours_compile_s']:.1f} s for {result['ours_compiles']} "
      f"program(s) in the warm-up, {result['ours_compiles_timed']} while timed; our widths "
      f"(query, passage) {result['ours_batch_shapes']}, theirs (query, positive, negative) "
      f"{result['reference_batch_widths']}",
  ])


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  """Runs the benchmark with the (parsed) flags of `flag_values`; prints and writes the result."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  fv = flag_values
  host_malloc.ensure_or_exit(fv.malloc, may_reexec=__name__ == "__main__")
  result = run(model=fv.model, data=fv.data, batch_size=fv.batch_size,
               query_max_length=fv.query_max_length, passage_max_length=fv.passage_max_length,
               steps=fv.steps, rounds=fv.rounds, warmup_steps=fv.warmup_steps, seed=fv.seed,
               pad_to_multiple_of=fv.pad_to_multiple_of)
  print(format_table(result))
  bench_harness.write_json(result, fv.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
