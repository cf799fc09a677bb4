"""An on-disk cache of completions keyed by (model, prompt, sampling settings).

SQLite (standard library, one file, safe against a crash mid-write): an interrupted run
resumes where it stopped and a rerun costs nothing. `CachedBackend` asks its backend only
for the prompts the cache lacks, in chunks, committing each chunk as it finishes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sqlite3
import threading
from typing import Callable, Sequence

from retrieval_jax.generation.backend import Backend, Prompt, Sampling, draws, prompt_key


def entry_key(model_id: str, prompt: Prompt, sampling: Sampling) -> str:
  """The cache key: a hash of the model, the canonical prompt and every sampling setting."""
  text = json.dumps([model_id, prompt_key(prompt), dataclasses.asdict(sampling)],
                    sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


class CompletionCache:
  """Completions by `entry_key`, in a SQLite file (created with its directory)."""

  def __init__(self, path: str | pathlib.Path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    self.path = path
    self._lock = threading.Lock()
    self._db = sqlite3.connect(str(path), check_same_thread=False)
    self._db.execute("CREATE TABLE IF NOT EXISTS completions "
                     "(key TEXT PRIMARY KEY, model TEXT, prompt TEXT, texts TEXT)")
    self._db.commit()

  def get(self, key: str) -> list[str] | None:
    with self._lock:
      row = self._db.execute("SELECT texts FROM completions WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else None

  def put_many(self, rows: Sequence[tuple[str, str, Prompt, list[str]]]) -> None:
    """Stores (key, model id, prompt, completions) rows in one transaction."""
    with self._lock:
      self._db.executemany(
          "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?)",
          [(key, model, prompt_key(prompt), json.dumps(texts))
           for key, model, prompt, texts in rows])
      self._db.commit()

  def __len__(self) -> int:
    with self._lock:
      return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

  def close(self) -> None:
    with self._lock:
      self._db.close()


class CachedBackend:
  """A backend whose results are looked up in, and written to, a `CompletionCache`.

  Attributes:
    hits, misses: Prompts answered from the cache and by the backend so far.
  """

  def __init__(self, backend: Backend, cache: CompletionCache, chunk_size: int = 16,
               progress: Callable[[int], None] | None = None):
    self.backend = backend
    self.cache = cache
    self.chunk_size = chunk_size
    self.progress = progress
    self.model_id = backend.model_id
    self.hits = self.misses = 0

  def _chunk(self, sampling: Sampling) -> int:
    """Prompts per backend call: `chunk_size`, rounded up to whole batches of a backend
    that decodes a fixed number of prompts at once (a part batch would be padding)."""
    per_batch = getattr(self.backend, "prompts_per_batch", None)
    if per_batch is None:
      return self.chunk_size
    batch = per_batch(draws(sampling))
    return -(-self.chunk_size // batch) * batch

  def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[str]]:
    keys = [entry_key(self.model_id, p, sampling) for p in prompts]
    results: list[list[str] | None] = [self.cache.get(k) for k in keys]
    missing = [i for i, r in enumerate(results) if r is None]
    self.hits += len(prompts) - len(missing)
    if self.progress and len(prompts) > len(missing):
      self.progress(len(prompts) - len(missing))
    step = self._chunk(sampling)
    for start in range(0, len(missing), step):
      chunk = missing[start:start + step]
      texts = self.backend.generate([prompts[i] for i in chunk], sampling)
      self.cache.put_many([(keys[i], self.model_id, prompts[i], t)
                           for i, t in zip(chunk, texts)])
      for i, t in zip(chunk, texts):
        results[i] = t
      self.misses += len(chunk)
      if self.progress:
        self.progress(len(chunk))
    return results  # type: ignore[return-value]
