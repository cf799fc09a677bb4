"""GGUF tokenizers: the digit split transformers' conversion drops is put back."""

import pytest

from retrieval_jax.models import causal_lm

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")


def _byte_level_bpe():
  """A byte-level BPE whose vocabulary merges " \\n" (as SmolLM2's does) but no digits."""
  byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  vocab = {token: i for i, token in enumerate(alphabet + ["ĠĊ"])}
  model = tokenizers.models.BPE(vocab, [("Ġ", "Ċ")])
  backend = tokenizers.Tokenizer(model)
  backend.pre_tokenizer = byte_level
  backend.decoder = tokenizers.decoders.ByteLevel()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=backend)


def test_digit_split_keeps_a_whitespace_run_before_a_digit_whole():
  tokenizer = _byte_level_bpe()
  pieces = lambda text: tokenizer.convert_ids_to_tokens(
      tokenizer(text, add_special_tokens=False)["input_ids"])
  # GPT-2's regex leaves the run's last space to the digit's word: " ", "\n", "1".
  assert pieces(" \n1.") == ["Ġ", "Ċ", "1", "."]
  causal_lm.with_digit_split(tokenizer)
  assert pieces(" \n1.") == ["ĠĊ", "1", "."]
  assert pieces("x 12") == ["x", "Ġ", "1", "2"]
  assert tokenizer.decode(tokenizer(" \n1.", add_special_tokens=False)["input_ids"]) == " \n1."


def test_packaged_smollm2_tokenises_as_llama_cpp_does():
  """The ids llama.cpp gives " \\n1. Guidance" (`tests/test_llama_cpp.py` checks whole prompts)."""
  try:
    path = causal_lm.packaged_gguf("smollm2")
  except ImportError as e:
    pytest.skip(str(e))
  assert causal_lm._gguf_pre_tokenizer_name(path) == "smollm"  # pylint: disable=protected-access
  tokenizer = causal_lm.gguf_tokenizer(path)
  assert tokenizer(" \n1. Guidance", add_special_tokens=False)["input_ids"] == [
      3717, 33, 30, 32460]
