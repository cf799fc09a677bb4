"""SmolLM2-135M-Instruct from its packaged Q4_1 GGUF against transformers' own GGUF loading.

Both sides dequantise the same file (transformers through its GGUF integration, which needs
`accelerate`), so logits must agree to float32 rounding and greedy replies token for token.
Slow: transformers' GGUF conversion takes minutes on 2 cores.
"""

import numpy as np
import pytest

from retrieval_jax.generation import backend as backend_lib
from retrieval_jax.generation import decode
from retrieval_jax.generation.jax_backend import JaxBackend
from retrieval_jax.models import causal_lm, llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "user", "content": "Write one sentence about the function of ribosomes."}],
           [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Does vitamin D reduce the risk of fractures?"}]]


@pytest.fixture(scope="module")
def models():
  try:
    path = causal_lm.packaged_gguf("smollm2")
  except ImportError as e:
    pytest.skip(str(e))
  ours = causal_lm.load("smollm2")
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  return ours, reference


@pytest.mark.slow
def test_logits_equal_transformers(models):
  lm, reference = models
  backend = JaxBackend(lm)
  worst = 0.0
  for prompt in PROMPTS:
    ids = np.asarray([backend.render(prompt)])
    ours = np.asarray(llama.forward(lm.module, lm.params, ids, np.ones_like(ids)))
    with torch.no_grad():
      theirs = reference(torch.tensor(ids)).logits.numpy()
    worst = max(worst, float(np.abs(ours - theirs).max()))
  print(f"[measured] SmolLM2-135M Q4_1: logits max abs diff vs transformers {worst:.1e}")
  assert worst <= 1e-3


@pytest.mark.slow
def test_greedy_replies_equal_transformers_token_for_token(models):
  lm, reference = models
  backend = JaxBackend(lm, batch_size=len(PROMPTS))
  rendered = [backend.render(p) for p in PROMPTS]
  length = max(map(len, rendered))
  ids = np.zeros((len(PROMPTS), length), np.int32)
  mask = np.zeros_like(ids)
  for r, tokens in enumerate(rendered):
    ids[r, length - len(tokens):], mask[r, length - len(tokens):] = tokens, 1
  tokens, lengths = decode.generate(lm.module, lm.params, ids, mask,
                                    decode.row_keys(0, np.zeros(3), np.zeros(3)),
                                    np.asarray(lm.stop_ids), max_new_tokens=48)
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  for r, prompt_ids in enumerate(rendered):
    with torch.no_grad():
      out = reference.generate(torch.tensor([prompt_ids]), max_new_tokens=48, do_sample=False,
                               eos_token_id=list(lm.stop_ids), pad_token_id=lm.stop_ids[0])
    expected = out[0, len(prompt_ids):].tolist()
    print(f"[measured] reply {r}: {lm.tokenizer.decode(expected)!r}")
    assert tokens[r, :lengths[r]].tolist() == expected
  texts = backend.generate(PROMPTS[:1], backend_lib.Sampling(max_new_tokens=16))
  assert texts == [["The capital of France is Paris."]]
