"""A client for OpenAI-compatible servers: vLLM, vLLM-TPU, llama.cpp's server, Ollama, APIs.

Chat prompts go to `/v1/chat/completions`, string prompts to `/v1/completions`. Each of a
prompt's N completions is one request with its own seed (`backend.sample_seed`): servers
differ in whether they honour `n`, all of them take `seed`. At temperature 0 a prompt is one
request whose answer is copied N times, as the in-process backend does: greedy decoding has
one answer, and a local server would otherwise prefill a long prompt N times. Requests run
on a bounded thread pool; a timeout, a dropped connection, 429 or 5xx is retried with
exponential backoff and jitter (a `Retry-After` header is honoured), any other status fails
at once with the server's message. The API key is read from the environment variable named by
`api_key_env` and never logged or put in an error.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import random
import socket
import time
import urllib.error
import urllib.request
from typing import Sequence

from retrieval_jax.generation.backend import Prompt, Sampling, draws, sample_seed

logger = logging.getLogger(__name__)

_RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class GenerationError(RuntimeError):
  """A request that failed for good (a non-retried status, or retries exhausted)."""


class OpenAIBackend:
  """Completions from an OpenAI-compatible HTTP server.

  Args:
    base_url: The server's root, e.g. `http://127.0.0.1:8000` (`/v1/...` is appended; a
      URL already ending in `/v1` is accepted too).
    model: The `model` field of every request (also the cache's model id).
    api_key_env: Environment variable holding the key (sent as a Bearer token if set).
    timeout: Seconds a request may take before it is retried.
    max_retries: Retries per request after the first attempt.
    backoff: The first retry's delay in seconds; doubled at each further retry (jittered).
    concurrency: Requests in flight at once.
    extra_body: Fields added to every request, for a server's own sampling settings (part
      of the cache's model id). llama.cpp's server applies `repeat_penalty` 1.1, `top_k` 40
      and `min_p` 0.05 unless told otherwise, even at temperature 0; `{"repeat_penalty": 1,
      "top_k": 0, "min_p": 0}` makes it sample as the OpenAI API and our backend do.
  """

  def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
               timeout: float = 120.0, max_retries: int = 6, backoff: float = 1.0,
               concurrency: int = 8, extra_body: dict | None = None):
    root = base_url.rstrip("/")
    self.v1 = root if root.endswith("/v1") else root + "/v1"
    self.model = model
    self.extra_body = dict(extra_body or {})
    self.model_id = f"{model}@{self.v1}"
    if self.extra_body:
      self.model_id += " " + json.dumps(self.extra_body, sort_keys=True)
    self.api_key_env = api_key_env
    self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
    self.concurrency = concurrency
    self.retries = 0  # requests retried so far (for logs and tests)

  def _body(self, prompt: Prompt, sampling: Sampling, index: int) -> tuple[str, dict]:
    body = {"model": self.model, "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "seed": sample_seed(sampling, prompt, index), **self.extra_body}
    if sampling.stop:
      body["stop"] = list(sampling.stop)
    if isinstance(prompt, str):
      return "/completions", {**body, "prompt": prompt}
    return "/chat/completions", {**body, "messages": [dict(m) for m in prompt]}

  def _post(self, path: str, body: dict) -> dict:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(self.api_key_env)
    if key:
      headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode()
    for attempt in range(self.max_retries + 1):
      request = urllib.request.Request(self.v1 + path, data=data, headers=headers)
      delay = self.backoff * 2 ** attempt * (0.5 + random.random() / 2)
      try:
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
          return json.loads(response.read())
      except urllib.error.HTTPError as error:
        message = error.read().decode(errors="replace")[:300]
        if error.code not in _RETRIED_STATUSES:
          raise GenerationError(f"POST {self.v1}{path}: HTTP {error.code}: {message}") from None
        retry_after = error.headers.get("Retry-After")
        if retry_after and retry_after.replace(".", "", 1).isdigit():
          delay = max(delay, float(retry_after))
        reason = f"HTTP {error.code}"
      except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as error:
        reason = type(getattr(error, "reason", error)).__name__
      if attempt == self.max_retries:
        raise GenerationError(f"POST {self.v1}{path}: {reason} after {attempt + 1} attempts")
      self.retries += 1
      logger.warning("POST %s%s: %s; retry %d/%d in %.1f s", self.v1, path, reason,
                     attempt + 1, self.max_retries, delay)
      time.sleep(delay)
    raise AssertionError("unreachable")

  def _complete(self, prompt: Prompt, sampling: Sampling, index: int) -> str:
    path, body = self._body(prompt, sampling, index)
    reply = self._post(path, body)
    try:
      choice = reply["choices"][0]
      return choice["message"]["content"] if path == "/chat/completions" else choice["text"]
    except (KeyError, IndexError, TypeError):
      raise GenerationError(f"POST {self.v1}{path}: unexpected reply "
                            f"{json.dumps(reply)[:300]}") from None

  def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[str]]:
    count = draws(sampling)
    jobs = [(p, i) for p in range(len(prompts)) for i in range(count)]
    with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
      texts = list(pool.map(lambda job: self._complete(prompts[job[0]], sampling, job[1]),
                            jobs))
    return [texts[p * count:(p + 1) * count] * (sampling.n // count)
            for p in range(len(prompts))]
