r"""Where two greedy runs of the same model part, and how close to a tie our logits were there.

Two float32 implementations of one model (ours in JAX, llama.cpp's) agree to rounding, not to
the bit, so greedy decoding can follow either of two tokens whose logits are within that
rounding of each other, and the replies then differ from there on. Over 128-token answers to
2,000-token LameR prompts such near-ties are frequent. This script tells a near-tie from a
real disagreement: for every query whose first answer differs between run A and run B, it
finds the first differing token and prints our logit gap between the two tokens chosen
there (A's and B's), computed by our model on the prompt plus the common prefix.

  python eval/greedy_divergence.py --runs=runs/lamer_table --a=lamer_jax_greedy \
      --b=lamer_llamacpp_f32_greedy --model=smollm2 --out=runs/lamer_table/divergence.json

Each run directory holds the LameR evaluator's `eval/dev/generations.jsonl` (the prompt as
chat messages and the answers). The prompt is rendered with the model's chat template, as the
in-process backend renders it; answers are re-tokenised from their text.
"""

from __future__ import annotations

import json
import pathlib
import statistics
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import numpy as np

from eval import bench_harness

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags on `flag_values` (not at import: tests import this beside other CLIs)."""
  flags.DEFINE_string("runs", None, "Directory holding both runs.", flag_values=flag_values)
  flags.DEFINE_string("a", "lamer_jax_greedy", "Run A (its answers are ours).",
                      flag_values=flag_values)
  flags.DEFINE_string("b", "lamer_llamacpp_f32_greedy", "Run B.", flag_values=flag_values)
  flags.DEFINE_string("model", "smollm2", "The model both runs used (`causal_lm.load` name).",
                      flag_values=flag_values)
  flags.DEFINE_float("tie", 1e-2, "Gaps below this count as near-ties in the summary.",
                     flag_values=flag_values)
  flags.DEFINE_integer("limit", 0, "Only the first N differing queries (0: all).",
                       flag_values=flag_values)
  flags.DEFINE_string("out", None, "Write the results as JSON to this file.",
                      flag_values=flag_values)


def load_generations(run: pathlib.Path) -> dict[str, dict[str, Any]]:
  """query id -> {"prompt", "answers"} from a LameR run directory."""
  path = run / "eval" / "dev" / "generations.jsonl"
  if not path.is_file():
    raise app.UsageError(f"{path}: not found (not a finished LameR run)")
  rows = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    try:
      row = json.loads(line)
      rows[str(row["query_id"])] = {"prompt": row["prompt"], "answers": row["answers"]}
    except (ValueError, KeyError) as e:
      raise app.UsageError(f"{path}:{number}: not a generations row ({e})") from e
  return rows


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
  """Index of the first differing token (the shorter length if one is a prefix), else None."""
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def divergence(render: Callable[[Any], list[int]], tokenize: Callable[[str], list[int]],
               last_logits: Callable[[list[int]], np.ndarray], prompt: Any, answer_a: str,
               answer_b: str) -> dict[str, Any] | None:
  """The first differing token of two answers and our logit gap there (None: identical).

  `gap` = |logit(A's token) - logit(B's token)|; when one answer stops where the other goes
  on, the token that ends it has no text, so `gap` is None and `ended` is True.
  """
  a, b = tokenize(answer_a), tokenize(answer_b)
  k = first_difference(a, b)
  if k is None:
    return None
  logits = last_logits(render(prompt) + a[:k])
  second, first = np.sort(logits)[-2:]
  out = {"token": k, "tokens_a": len(a), "tokens_b": len(b), "top_gap": float(first - second)}
  if k >= len(a) or k >= len(b):
    return {**out, "gap": None, "ended": True}
  return {**out, "gap": float(abs(logits[a[k]] - logits[b[k]])), "ended": False,
          "a_is_our_argmax": bool(int(np.argmax(logits)) == a[k])}


def summarize(records: Sequence[dict[str, Any] | None], tie: float) -> dict[str, Any]:
  """Counts and gap statistics over the queries (None records are identical answers)."""
  parted = [r for r in records if r is not None]
  gaps = [r["gap"] for r in parted if r["gap"] is not None]
  return {"queries": len(records), "identical": len(records) - len(parted),
          "parted": len(parted), "parted_where_one_ended": sum(r["ended"] for r in parted),
          "near_ties": sum(g < tie for g in gaps), "tie_threshold": tie,
          "gap_max": max(gaps, default=None), "gap_median": statistics.median(gaps) if gaps
          else None, "first_token_median": statistics.median(r["token"] for r in parted)
          if parted else None}


def _model_callables(name: str):
  """(render, tokenize, last_logits) for `causal_lm.load(name)` in float32."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from retrieval_jax.generation.jax_backend import JaxBackend  # pylint: disable=g-import-not-at-top
  from retrieval_jax.models import causal_lm, llama  # pylint: disable=g-import-not-at-top

  backend = JaxBackend(causal_lm.load(name), batch_size=1)
  module, params = backend.lm.module, backend.lm.params

  @jax.jit
  def last(ids, mask):
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    cache = llama.init_cache(module.config, ids.shape[0], ids.shape[1])
    logits, _ = module.apply({"params": params}, ids, positions, mask, cache, 0, last_only=True)
    return logits[0]

  def last_logits(tokens: list[int]) -> np.ndarray:
    length = -(-len(tokens) // 128) * 128  # left-padded to a multiple: few compilations
    ids = np.zeros((1, length), np.int32)
    mask = np.zeros((1, length), np.int32)
    ids[0, length - len(tokens):], mask[0, length - len(tokens):] = tokens, 1
    return np.asarray(last(ids, mask), np.float64)

  tokenize = lambda text: backend.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
  return backend.render, tokenize, last_logits


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flag_values.runs:
    raise app.UsageError("--runs is required")
  runs = pathlib.Path(flag_values.runs)
  a, b = (load_generations(runs / name) for name in (flag_values.a, flag_values.b))
  common = [q for q in a if q in b]
  if not common:
    raise app.UsageError(f"{flag_values.a} and {flag_values.b} share no query")
  render, tokenize, last_logits = _model_callables(flag_values.model)
  # Identical first answers are None; with --limit, differing queries past it are left out.
  records: dict[str, dict[str, Any] | None] = {
      q: None for q in common if a[q]["answers"][0] == b[q]["answers"][0]}
  differing = [q for q in common if q not in records]
  if flag_values.limit:
    differing = differing[:flag_values.limit]
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  for q in tqdm(differing, desc="divergences", unit="query"):
    records[q] = divergence(render, tokenize, last_logits, a[q]["prompt"], a[q]["answers"][0],
                            b[q]["answers"][0])
  summary = summarize(list(records.values()), flag_values.tie)
  print(f"{flag_values.a} vs {flag_values.b}: {summary['identical']}/{summary['queries']} "
        f"first answers identical; of the {summary['parted']} that part, "
        f"{summary['near_ties']} at a near-tie (our logit gap < {flag_values.tie}), "
        f"{summary['parted_where_one_ended']} where one answer ends; gap median "
        f"{summary['gap_median']}, max {summary['gap_max']}; first differing token (median) "
        f"{summary['first_token_median']}")
  bench_harness.write_json({"a": flag_values.a, "b": flag_values.b, "model": flag_values.model,
                            "summary": summary, "per_query": records,
                            "environment": bench_harness.environment()}, flag_values.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
