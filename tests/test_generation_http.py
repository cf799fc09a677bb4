"""The OpenAI-compatible client and the completion cache, against a scripted local server.

The server made here serves the fault cases a real one rarely shows on demand: 500, 429
with Retry-After, a stalled reply, a 400. Real-server tests (llama.cpp) are elsewhere.
"""

import http.server
import json
import logging
import threading
import time

import pytest

from retrieval_jax.generation import backend as backend_lib
from retrieval_jax.generation import cache as cache_lib
from retrieval_jax.generation.openai_http import GenerationError, OpenAIBackend


class _Server:
  """A local HTTP server answering each request with the next scripted behaviour.

  Behaviours: "ok", an int status (with a JSON error body), ("429", seconds) with a
  Retry-After header, ("stall", seconds) then ok. Ok replies echo the prompt and seed.
  """

  def __init__(self, script=(), delay=0.0):
    self.script = list(script)
    self.delay = delay
    self.requests = []
    self.in_flight = self.max_in_flight = 0
    self.lock = threading.Lock()
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):  # pylint: disable=invalid-name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with outer.lock:
          outer.requests.append((self.path, dict(self.headers), body))
          behaviour = outer.script.pop(0) if outer.script else "ok"
          outer.in_flight += 1
          outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
        self.counted = True
        try:
          if isinstance(behaviour, tuple) and behaviour[0] == "stall":
            time.sleep(behaviour[1])
          if isinstance(behaviour, tuple) and behaviour[0] == "429":
            self._reply(429, {"error": "slow down"}, {"Retry-After": str(behaviour[1])})
          elif isinstance(behaviour, int):
            self._reply(behaviour, {"error": f"scripted {behaviour}"})
          else:
            time.sleep(outer.delay)
            text = f"{body.get('prompt') or body['messages'][-1]['content']}|{body['seed']}"
            choice = ({"text": text} if self.path.endswith("/completions")
                      and "messages" not in body else {"message": {"content": text}})
            self._reply(200, {"choices": [choice]})
        except (BrokenPipeError, ConnectionResetError):
          pass
        finally:
          self._done()

      def _done(self):
        with outer.lock:
          if self.counted:
            outer.in_flight -= 1
            self.counted = False

      def _reply(self, status, payload, headers=None):
        # Done before the reply leaves: the client may send its next request as soon as it
        # has read this one, and that must not count as one more in flight.
        self._done()
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
          self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server(request):
  servers = []

  def make(script=(), delay=0.0):
    servers.append(_Server(script, delay))
    return servers[-1]

  yield make
  for s in servers:
    s.close()


def _client(url, **kwargs):
  return OpenAIBackend(url, "tiny", **{"backoff": 0.01, "timeout": 5.0, **kwargs})


CHAT = [{"role": "user", "content": "q1"}]


def test_500_and_429_are_retried_then_answered(server):
  s = server([500, ("429", 0), "ok"])
  client = _client(s.url)
  assert client.generate([CHAT], backend_lib.Sampling()) == [
      [f"q1|{backend_lib.sample_seed(backend_lib.Sampling(), CHAT, 0)}"]]
  assert client.retries == 2 and len(s.requests) == 3
  path, _, body = s.requests[-1]
  assert path == "/v1/chat/completions"
  assert body["model"] == "tiny" and body["messages"] == CHAT and body["max_tokens"] == 128


def test_retry_after_is_honoured(server):
  s = server([("429", 0.6), "ok"])
  start = time.monotonic()
  _client(s.url).generate([CHAT], backend_lib.Sampling())
  assert time.monotonic() - start >= 0.6


def test_a_stalled_reply_times_out_and_is_retried(server):
  s = server([("stall", 3.0), "ok"])
  client = _client(s.url, timeout=0.5)
  start = time.monotonic()
  assert client.generate([CHAT], backend_lib.Sampling())[0][0].startswith("q1|")
  assert client.retries == 1 and time.monotonic() - start < 2.5


def test_a_client_error_fails_at_once_and_exhausted_retries_fail(server):
  s = server([400])
  with pytest.raises(GenerationError, match=r"HTTP 400: .*scripted 400"):
    _client(s.url).generate([CHAT], backend_lib.Sampling())
  assert len(s.requests) == 1
  s = server([503] * 3)
  with pytest.raises(GenerationError, match="HTTP 503 after 3 attempts"):
    _client(s.url, max_retries=2).generate([CHAT], backend_lib.Sampling())


def test_the_api_key_is_sent_and_never_logged_or_raised(server, monkeypatch, caplog):
  monkeypatch.setenv("TEST_LLM_KEY", "sk-secret-123")
  s = server([500, 401])
  with caplog.at_level(logging.WARNING), pytest.raises(GenerationError) as error:
    _client(s.url, api_key_env="TEST_LLM_KEY").generate([CHAT], backend_lib.Sampling())
  assert s.requests[0][1]["Authorization"] == "Bearer sk-secret-123"
  assert "sk-secret" not in str(error.value) and "sk-secret" not in caplog.text
  assert "retry 1/" in caplog.text


def test_string_prompts_use_completions_and_n_samples_have_their_own_seeds(server):
  s = server()
  sampling = backend_lib.Sampling(n=3, temperature=0.7, top_p=0.9, seed=5, stop=("\n",))
  (texts,) = _client(s.url).generate(["Once"], sampling)
  seeds = [int(t.split("|")[1]) for t in texts]
  assert len(set(seeds)) == 3
  assert seeds == [backend_lib.sample_seed(sampling, "Once", i) for i in range(3)]
  path, _, body = s.requests[0]
  assert path == "/v1/completions" and body["stop"] == ["\n"] and body["top_p"] == 0.9


def test_greedy_sends_one_request_per_prompt_and_copies_it(server):
  s = server()
  (texts,) = _client(s.url).generate(["Once"], backend_lib.Sampling(n=4, temperature=0.0))
  assert len(s.requests) == 1 and len(texts) == 4 and len(set(texts)) == 1


def test_concurrency_is_bounded(server):
  s = server(delay=0.2)
  _client(s.url, concurrency=3).generate([[{"role": "user", "content": f"q{i}"}]
                                          for i in range(9)], backend_lib.Sampling())
  assert 1 < s.max_in_flight <= 3


class _Counting:
  """A backend that records what it was asked and can fail on a chosen call."""
  model_id = "counting"

  def __init__(self, fail_on_call=None):
    self.calls, self.fail_on_call = [], fail_on_call

  def generate(self, prompts, sampling):
    self.calls.append(list(prompts))
    if len(self.calls) == self.fail_on_call:
      raise RuntimeError("interrupted")
    return [[f"{p}#{i}" for i in range(sampling.n)] for p in prompts]


def test_the_cache_resumes_an_interrupted_run_and_a_rerun_costs_nothing(tmp_path):
  prompts = [f"p{i}" for i in range(5)]
  sampling = backend_lib.Sampling(n=2)
  store = cache_lib.CompletionCache(tmp_path / "c" / "gen.sqlite")
  first = cache_lib.CachedBackend(_Counting(fail_on_call=2), store, chunk_size=2)
  with pytest.raises(RuntimeError, match="interrupted"):
    first.generate(prompts, sampling)
  assert len(store) == 2  # the first chunk was committed before the failure
  store.close()

  store = cache_lib.CompletionCache(tmp_path / "c" / "gen.sqlite")  # a new process
  inner = _Counting()
  resumed = cache_lib.CachedBackend(inner, store, chunk_size=2)
  assert resumed.generate(prompts, sampling) == [[f"{p}#0", f"{p}#1"] for p in prompts]
  assert inner.calls == [["p2", "p3"], ["p4"]] and resumed.hits == 2

  again = _Counting()
  assert cache_lib.CachedBackend(again, store).generate(prompts, sampling)[4] == ["p4#0", "p4#1"]
  assert again.calls == []
  # Another sampling setting or model is another entry.
  other = _Counting()
  cache_lib.CachedBackend(other, store).generate(prompts[:1], backend_lib.Sampling(n=2, seed=1))
  assert other.calls == [["p0"]]


def test_sampling_settings_are_checked():
  with pytest.raises(ValueError, match="top_p"):
    backend_lib.Sampling(top_p=0.0)
  with pytest.raises(ValueError, match="n=0"):
    backend_lib.Sampling(n=0)


class _Batched(_Counting):
  """A backend that decodes a fixed number of prompts at once, as `JaxBackend`."""

  def prompts_per_batch(self, rows):
    return 12 // rows


def test_cache_chunks_are_whole_batches_of_a_fixed_batch_backend(tmp_path):
  store = cache_lib.CompletionCache(tmp_path / "gen.sqlite")
  inner = _Batched()
  cached = cache_lib.CachedBackend(inner, store, chunk_size=16)
  cached.generate([f"p{i}" for i in range(30)], backend_lib.Sampling(n=2, temperature=0.0))
  assert [len(c) for c in inner.calls] == [24, 6]  # 12 greedy prompts a batch
  cached.generate([f"s{i}" for i in range(30)], backend_lib.Sampling(n=4, temperature=1.0))
  assert [len(c) for c in inner.calls[2:]] == [18, 12]  # 3 prompts of 4 samples a batch
