r"""Generated tokens/s: our JAX backend against llama-cpp-python and transformers `generate`.

Every engine answers the same LameR prompts (SciFact dev queries with their BM25 top 10, the
paper's `scientific` prompt; `--data=synthetic` for made-up passages) with the same model,
`--samples` completions a prompt of exactly `--max_new_tokens` tokens (the end-of-turn tokens
are banned, so every engine does the same work) at temperature 1. Engines:

  jax          ours in process (`JaxBackend`): the prompts' samples decoded as one batch,
               each prompt prefilled once
  llama_cpp    llama-cpp-python on the packaged Q4_1 file (llama.cpp's own format); one
               sequence at a time, a prompt's later samples reuse its cached prefix
  llama_cpp_f32  the same on the float32 file of the same weights (`eval/llama_cpp_f32.py`)
  transformers `LlamaForCausalLM.generate` on the dequantised GGUF in float32, the prompts
               left-padded in one batch with `num_return_sequences`

A first round warms every engine up (compilation, lazy loading) and is not timed; the timed
rounds run the engines in turn, alternating their order, so a busy machine slows all of
them alike. The table gives the median round.

  python eval/bench_generate.py --out=runs/bench_generate.json
  python eval/bench_generate.py --engines=jax,llama_cpp --prompts=2 --max_new_tokens=32
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Callable, Sequence

from absl import app, flags

from retrieval_jax import host_malloc
from retrieval_jax.generation import expansion
from retrieval_jax.generation.backend import Sampling
from retrieval_jax.generation.jax_backend import JaxBackend
from retrieval_jax.models import causal_lm

from eval import bench_harness
from eval import llama_cpp_f32

ENGINES = ("jax", "llama_cpp", "llama_cpp_f32", "transformers")
FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags on `flag_values` (not at import: other eval CLIs define `--out` too)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("out", None, "Write the results as JSON to this file.", **fv)
  flags.DEFINE_string("model", "smollm2", "A packaged LM name (its GGUF feeds every engine).",
                      **fv)
  flags.DEFINE_string("tokenizer", None, "For `--model=random` only: its vocabulary.", **fv)
  flags.DEFINE_list("engines", list(ENGINES), f"Engines to time, of {ENGINES}.", **fv)
  flags.DEFINE_string("data", "scifact", "BEIR name or directory for the prompts' queries and "
                      "passages, or `synthetic`.", **fv)
  flags.DEFINE_integer("prompts", 4, "Prompts (LameR: a query and its 10 candidates each).",
                       **fv)
  flags.DEFINE_integer("candidates", 10, "Passages in a prompt.", **fv)
  flags.DEFINE_integer("samples", 5, "Completions per prompt (LameR's N).", **fv)
  flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated per completion.", **fv)
  flags.DEFINE_integer("rounds", 2, "Timed rounds (after an untimed warm-up).", **fv)
  flags.DEFINE_integer("threads", 2, "CPU threads for llama.cpp and torch.", **fv)
  flags.DEFINE_string("f32_gguf", None, "The float32 GGUF for llama_cpp_f32 (default: written "
                      "to a temporary directory).", **fv)
  host_malloc.define_flag(flag_values)


@dataclasses.dataclass
class Workload:
  """What every engine generates: the chat prompts (and their rendered ids), samples each,
  tokens each."""
  chats: list[list[dict]]
  prompts: list[list[int]]
  samples: int
  max_new_tokens: int
  banned: tuple[int, ...]  # end-of-turn ids, never sampled

  @property
  def tokens(self) -> int:
    return len(self.prompts) * self.samples * self.max_new_tokens


def lamer_prompts(data: str, count: int, candidates: int) -> list[list[dict]]:
  """LameR chat prompts for the first `count` queries of `data`'s dev split."""
  from retrieval_jax.data import splits  # pylint: disable=g-import-not-at-top
  from retrieval_jax.index.bm25 import BM25Index  # pylint: disable=g-import-not-at-top
  split = splits.load_split(data, "dev" if data != "synthetic" else "test")
  docs = split.doc_strings()
  queries = split.query_texts[:count]
  _, indices = BM25Index.build(docs, k1=0.9, b=0.4).search(queries, candidates)
  return [expansion.lamer_prompt(q, [docs[i] for i in row if i >= 0], "scientific")
          for q, row in zip(queries, indices)]


def jax_engine(lm: causal_lm.CausalLM, work: Workload) -> Callable[[], int]:
  """Our backend; the banned ids become no stop at all (the rows run to max_new_tokens)."""
  backend = JaxBackend(dataclasses.replace(lm, stop_ids=()),
                       batch_size=len(work.prompts) * work.samples,
                       max_prompt_tokens=max(map(len, work.prompts)))
  sampling = Sampling(n=work.samples, temperature=1.0, max_new_tokens=work.max_new_tokens)

  def run() -> int:
    backend.generate(work.chats, sampling)
    return work.tokens
  return run


def llama_cpp_engine(path: pathlib.Path, work: Workload, threads: int) -> Callable[[], int]:
  import llama_cpp  # pylint: disable=g-import-not-at-top
  longest = max(map(len, work.prompts)) + work.max_new_tokens
  engine = llama_cpp.Llama(model_path=str(path), n_ctx=longest + 64, n_threads=threads,
                           n_threads_batch=threads, verbose=False)
  bias = {token: -float("inf") for token in work.banned}

  def run() -> int:
    engine.reset()  # no prefix kept from the last round: each round prefills every prompt
    generated = 0
    for p, ids in enumerate(work.prompts):
      for s in range(work.samples):
        reply = engine.create_completion(ids, max_tokens=work.max_new_tokens, temperature=1.0,
                                         top_p=1.0, top_k=0, min_p=0.0, seed=p * 1000 + s,
                                         logit_bias=bias)
        generated += reply["usage"]["completion_tokens"]
    return generated
  return run


def transformers_engine(path: pathlib.Path, work: Workload, threads: int) -> Callable[[], int]:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  length = max(map(len, work.prompts))
  ids = torch.zeros((len(work.prompts), length), dtype=torch.long)
  mask = torch.zeros_like(ids)
  for r, row in enumerate(work.prompts):
    ids[r, length - len(row):] = torch.tensor(row)
    mask[r, length - len(row):] = 1

  def run() -> int:
    with torch.no_grad():
      out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                           top_p=1.0, top_k=0, num_return_sequences=work.samples,
                           max_new_tokens=work.max_new_tokens,
                           min_new_tokens=work.max_new_tokens,
                           suppress_tokens=list(work.banned), pad_token_id=0)
    return int((out.shape[1] - length) * out.shape[0])
  return run


def _f32_file(source: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  if not out.exists():
    llama_cpp_f32.write_f32(source, out)
  return out


def run(model: str, engines: Sequence[str], data: str, prompts: int, candidates: int,
        samples: int, max_new_tokens: int, rounds: int, threads: int,
        f32_gguf: str | None = None, tokenizer: str | None = None,
        log: Callable[[str], None] = print) -> dict:
  """Times the engines; returns the settings, every round's times and the summary."""
  unknown = set(engines) - set(ENGINES)
  if unknown:
    raise ValueError(f"--engines: unknown {sorted(unknown)}; use some of {ENGINES}")
  lm = causal_lm.load(model, tokenizer=tokenizer)
  renderer = JaxBackend(lm)
  chats = lamer_prompts(data, prompts, candidates)
  work = Workload(chats, [renderer.render(c) for c in chats], samples, max_new_tokens,
                  lm.stop_ids)
  log(f"{len(work.prompts)} prompts of {[len(p) for p in work.prompts]} tokens, {samples} "
      f"samples of {max_new_tokens} tokens each: {work.tokens} tokens a round")
  gguf = causal_lm.packaged_gguf(model) if model in causal_lm.PACKAGED_LMS else None
  builders = {"jax": lambda: jax_engine(lm, work)}
  skipped = {}
  if gguf is not None:
    try:
      import llama_cpp  # pylint: disable=g-import-not-at-top,unused-import
      f32 = pathlib.Path(f32_gguf or pathlib.Path(tempfile.mkdtemp()) / "model-f32.gguf")
      builders["llama_cpp"] = lambda: llama_cpp_engine(gguf, work, threads)
      builders["llama_cpp_f32"] = lambda: llama_cpp_engine(_f32_file(gguf, f32), work, threads)
    except ImportError:
      skipped.update({e: 'llama-cpp-python absent (pip install -e ".[llama_cpp]")'
                      for e in ("llama_cpp", "llama_cpp_f32")})
    builders["transformers"] = lambda: transformers_engine(gguf, work, threads)
  else:
    skipped.update({e: f"{model} has no packaged GGUF" for e in ENGINES if e != "jax"})
  engines = [e for e in engines if e not in skipped]
  runners = {}
  for name in engines:
    log(f"loading {name}")
    runners[name] = builders[name]()
    start = time.perf_counter()
    runners[name]()  # warm-up: compiles, fills lazy state
    log(f"  warm-up {time.perf_counter() - start:.1f} s")
  times, results = bench_harness.alternate({name: runners[name] for name in engines}, rounds,
                                           log=log)
  summary = {}
  for name in engines:
    seconds = statistics.median(times[name])
    tokens = results[name][-1]
    summary[name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
  if "jax" in summary:
    for name in summary:
      summary[name]["time_vs_jax"] = summary[name]["seconds"] / summary["jax"]["seconds"]
  return {"cpu": bench_harness.cpu_model(), "environment": bench_harness.environment(),
          "model": model,
          "prompts": len(work.prompts), "prompt_tokens": [len(p) for p in work.prompts],
          "samples": samples, "max_new_tokens": max_new_tokens, "rounds": rounds,
          "threads": threads, "times": times, "summary": summary, "skipped": skipped}


def format_table(result: dict) -> str:
  lines = [f"# {result['model']}: {result['prompts']} prompts ({result['prompt_tokens']} "
           f"tokens), {result['samples']} samples x {result['max_new_tokens']} new tokens; "
           f"{result['cpu']}, {result['threads']} threads",
           "| engine | median s | generated tokens | tokens/s | time / ours |",
           "|---|---|---|---|---|"]
  for name, row in result["summary"].items():
    lines.append(f"| {name} | {row['seconds']:.1f} | {row['tokens']} | "
                 f"{row['tokens_per_s']:.1f} | {row.get('time_vs_jax', float('nan')):.2f} |")
  for name, why in result["skipped"].items():
    lines.append(f"| {name} | skipped: {why} | | | |")
  return "\n".join(lines)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  del argv
  host_malloc.ensure_or_exit(flag_values.malloc, may_reexec=__name__ == "__main__")
  fv = flag_values
  try:
    result = run(fv.model, fv.engines, fv.data, fv.prompts, fv.candidates, fv.samples,
                 fv.max_new_tokens, fv.rounds, fv.threads, fv.f32_gguf, fv.tokenizer)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(format_table(result))
  bench_harness.write_json(result, fv.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
