r"""LameR (Shen et al. 2023, arXiv 2304.14233): BM25 → LLM answers → augmented BM25.

An evaluation-only recipe: nothing is trained. BM25 (k1 0.9, b 0.4: Pyserini's defaults,
which the paper and CSQE keep) retrieves each query's top M = 10 candidates; the LLM answers
the paper's prompt (the query and the candidates, each cut to 128 words) N = 5 times; the
query interleaved with its answers (the paper's Eq. 5; `--config.evals.dev.augment=repeat`
is CSQE's construction) is searched with BM25 again. Every answer is saved in
`<workdir>/eval/<name>/generations.jsonl`; completions are cached on disk, so a rerun
generates nothing.

  # the paper's setting against any OpenAI-compatible server (vLLM, llama.cpp, Ollama, an API)
  python main.py --config=configs/lamer.py --workdir=runs/lamer \
      --config.generator.base_url=http://127.0.0.1:8000 --config.generator.model=<name>
  python main.py --config=configs/lamer.py:cpu --workdir=runs/lamer_cpu   # SmolLM2 in process
  python main.py --config=configs/lamer.py:hyde_cpu --workdir=runs/hyde_cpu

Variants after the colon: `` (default: the paper on SciFact dev through an HTTP backend),
`cpu` (SmolLM2-135M-Instruct in process), `hyde` / `hyde_cpu` (HyDE: 8 passages from the
query alone, temperature 0.7, averaged with the query's embedding, dense search with
`config.model`), `smoke` (a tiny random LM on a synthetic corpus, seconds).

Deviations, and what the paper leaves open:
- The paper gives no sampling settings; temperature 1 and top-p 1 (the API defaults the
  paper's gpt-3.5-turbo ran with) and 128 new tokens (its passages are cut to 128 tokens).
- Truncation to 128 whitespace words stands in for the paper's 128 tokens.
- The paper's LLM is gpt-3.5-turbo; `cpu` uses a 135M model, for the pipeline, not the number.
- SciFact's prompt is the paper's `scientific` one (Table 7); the MS MARCO one is `answering`.
"""

import ml_collections

from configs import common


def lamer_eval(split: str = "dev", mode: str = "lamer") -> ml_collections.ConfigDict:
  """A `lamer` evaluator entry (`retrieval_jax.evaluators.lamer`)."""
  hyde = mode == "hyde"
  return ml_collections.ConfigDict({
      "type": "lamer",
      "data": {"name": None, "split": split, "dev_fraction": None, "tfds_dir": None},
      "mode": mode,
      "prompt": "scifact" if hyde else "scientific",
      "candidates": 10,
      "answers": 8 if hyde else 5,
      "augment": "interleave",
      "max_passage_words": 128,
      "depth": 1000,
      "metrics": ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map"),
      "bm25": {"k1": 0.9, "b": 0.4},
      # HyDE's generator defaults (texttron/hyde); LameR's: the API defaults (see above).
      "sampling": ({"max_new_tokens": 512, "temperature": 0.7, "top_p": 1.0, "seed": 0,
                    "stop": ("\n\n\n",)} if hyde else
                   {"max_new_tokens": 128, "temperature": 1.0, "top_p": 1.0, "seed": 0,
                    "stop": ()}),
      "max_length": 256,
      "batch_size": 64,
      "progress": True,
  })


def generator_config() -> ml_collections.ConfigDict:
  """`config.generator` (`retrieval_jax.recipes.lamer`)."""
  return ml_collections.ConfigDict({
      "backend": "http",
      "model": "gpt-3.5-turbo",
      "tokenizer": ml_collections.FieldReference(None, field_type=str),
      "base_url": "https://api.openai.com",
      "api_key_env": "OPENAI_API_KEY",
      "timeout": 120.0,
      "max_retries": 6,
      "concurrency": 8,
      # A JSON object added to every request: a server's own sampling fields.
      "extra_body": ml_collections.FieldReference(None, field_type=str),
      "batch_size": 8,
      "max_prompt_tokens": 2048,
      "max_batch_prompts": ml_collections.FieldReference(None, field_type=int),
      "cache": ml_collections.FieldReference(None, field_type=str),
  })


def get_config(arg: str = ""):
  config = common.base_config()
  config.recipe = "lamer"
  variant = arg or "default"
  config.data.name = "scifact"
  config.generator = generator_config()
  mode = "hyde" if variant.startswith("hyde") else "lamer"
  config.evals = {"dev": lamer_eval("dev", mode)}
  if variant in ("cpu", "hyde_cpu"):
    config.generator.backend = "jax"
    config.generator.model = "smollm2"
    # Rows decoded at once: LameR 8 prompts x 5 samples, HyDE 10 x 8 (greedy: one row a
    # prompt, at most max_batch_prompts). Each prompt is prefilled and cached once.
    config.generator.batch_size = 80 if mode == "hyde" else 40
    config.generator.max_prompt_tokens = 4096  # 10 candidates of 128 words: ~2,100 tokens
    config.generator.max_batch_prompts = 16  # greedy: 16 such prompts, not 40, a batch
  elif variant == "smoke":
    config.data.name = "synthetic"
    config.generator.backend = "jax"
    config.generator.model = "random"
    config.generator.tokenizer = "minilm"
    config.generator.cache = "off"
    dev = config.evals.dev
    dev.candidates, dev.answers, dev.depth = 3, 2, 10
    dev.sampling.max_new_tokens = 8
    dev.metrics = ("ndcg@10", "recall@10")
  elif variant not in ("default", "hyde"):
    raise ValueError(f"unknown variant {arg!r}; use one of '', 'cpu', 'hyde', 'hyde_cpu', "
                     "'smoke'")
  return config
