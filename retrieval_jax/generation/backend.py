"""What every generation backend takes and gives: prompts in, N completions each out.

A prompt is either chat messages (`[{"role": "user", "content": ...}, ...]`, rendered by the
model's chat template or sent to `/v1/chat/completions`) or a plain string (a raw completion
prompt, `/v1/completions`). `Sampling` holds everything that changes the output, so it is
part of every cache key; completion `i` of a prompt is drawn with a seed derived from
(`seed`, the prompt, `i`), never from its position in a batch, so results do not depend on
batching or on which prompts were already cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Protocol, Sequence, Union

Message = dict[str, str]
Prompt = Union[str, Sequence[Message]]


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Sampling settings. `temperature` 0 is greedy (then every completion is the same)."""
  n: int = 1
  max_new_tokens: int = 128
  temperature: float = 0.0
  top_p: float = 1.0
  seed: int = 0
  stop: tuple[str, ...] = ()

  def __post_init__(self):
    if self.n < 1 or self.max_new_tokens < 1:
      raise ValueError(f"n={self.n} and max_new_tokens={self.max_new_tokens} must be >= 1")
    if self.temperature < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f"temperature={self.temperature} must be >= 0 and top_p={self.top_p} "
                       "in (0, 1]")


def draws(sampling: Sampling) -> int:
  """Completions decoded per prompt: one when greedy (it is copied N times), else N."""
  return 1 if sampling.temperature == 0 else sampling.n


def prompt_key(prompt: Prompt) -> str:
  """A canonical JSON text of a prompt (what hashes and cache keys are made from)."""
  if isinstance(prompt, str):
    return json.dumps(prompt)
  return json.dumps([{"role": m["role"], "content": m["content"]} for m in prompt],
                    sort_keys=True)


def prompt_hash(prompt: Prompt) -> int:
  """A stable 32-bit number of a prompt (the same in every process and run)."""
  return int.from_bytes(hashlib.sha256(prompt_key(prompt).encode()).digest()[:4], "little")


def sample_seed(sampling: Sampling, prompt: Prompt, index: int) -> int:
  """The 31-bit seed of completion `index` of `prompt` (for servers that take a seed)."""
  text = f"{sampling.seed}\0{prompt_key(prompt)}\0{index}".encode()
  return int.from_bytes(hashlib.sha256(text).digest()[:4], "little") & 0x7FFFFFFF


class Backend(Protocol):
  """A generator: `model_id` names what generates (a cache key part)."""
  model_id: str

  def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[str]]:
    """`sampling.n` completions of every prompt, in order."""
