"""The process's C heap: tcmalloc preloaded in place of glibc's malloc.

XLA:CPU allocates each call's buffers (its outputs and one block for all intermediates) with
`malloc` on its worker threads and frees them when the call ends. Under glibc's malloc the
large ones are fresh `mmap`s every call: a worker thread's arena cannot hold them, and blocks
above the mmap threshold (which glibc raises by itself to at most 32 MiB) go back to the
kernel on `free`. A training step then faults in its whole working set afresh and the kernel
zeroes every page. tcmalloc keeps freed memory for the next call. Tuning glibc instead
(`mallopt`) fragments its heap over a training run, and mimalloc did not speed the training
loop up; WORKSPACE.md ("The C heap") has the measurements.

An allocator replaces `malloc` only when it is loaded before anything allocates, i.e. through
`LD_PRELOAD` when the process starts. So `ensure` re-executes the program (same PID,
arguments and environment, plus `LD_PRELOAD`) before JAX starts, and in the new process finds
the library mapped and says so. `--malloc` of `main.py` and the `eval/` tools chooses:

- `auto` (the default): tcmalloc when the system has it (Debian and Ubuntu:
  `apt-get install libtcmalloc-minimal4`; conda: `gperftools`), else glibc's malloc with a
  warning that says how to install it;
- `tcmalloc`: tcmalloc, or an error when it is not found;
- `system`: the C library's own malloc, nothing preloaded;
- a path to a shared library: preload that one (jemalloc, mimalloc, a custom build).

An allocator already loaded (by the user's `LD_PRELOAD`, or by `/etc/ld.so.preload`) is kept.
Only Linux preloads; elsewhere `auto` keeps the system's allocator.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import re
import sys
import sysconfig

from absl import flags
from absl import logging

AUTO = "auto"
SYSTEM = "system"
TCMALLOC = "tcmalloc"
# The names tcmalloc ships under (tcmalloc_minimal: Debian's libtcmalloc-minimal4, without
# the heap profiler).
_TCMALLOC_STEMS = ("tcmalloc_minimal", "tcmalloc")
_INSTALL_HINT = ("apt-get install libtcmalloc-minimal4, dnf install gperftools-libs or "
                 "conda install -c conda-forge gperftools")
# Set for the re-executed process: which library it was meant to preload (no second re-exec).
REEXEC_ENV = "RETRIEVAL_JAX_MALLOC_PRELOADED"
_ALLOCATOR_FILE = re.compile(r"^lib(mimalloc|tcmalloc|tcmalloc_minimal|jemalloc)\b.*\.so")
# gperftools' full libtcmalloc can report each allocation above 1 GiB on stderr (the minimal
# build does not); XLA's blocks often are that large.
_TCMALLOC_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**42)}

_WHY_SLOW = ("XLA:CPU then faults in its buffers afresh on every call (CPU training runs "
             "1.1-1.2x slower)")


class MallocError(ValueError):
  """`--malloc` names an allocator that cannot be found or loaded here."""


def define_flag(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
  """Defines `--malloc` on `flag_values` (see the module docstring), once per `flag_values`."""
  if "malloc" in flag_values:  # another module of this process's program defined it
    return flags.FlagHolder(flag_values, flag_values["malloc"])
  holder = flags.DEFINE_string(
      "malloc", AUTO,
      "The C heap, preloaded before JAX starts: auto (tcmalloc when installed, else glibc's "
      "malloc), tcmalloc, system (the C library's malloc), or a path to an allocator's "
      "shared library. See retrieval_jax/host_malloc.py.", flag_values=flag_values)
  flags.register_validator(
      "malloc", _valid_choice,
      message="--malloc must be auto, system, tcmalloc or an existing file",
      flag_values=flag_values)
  return holder


def _valid_choice(choice: str) -> bool:
  return choice in (AUTO, SYSTEM, TCMALLOC) or os.path.isfile(choice)


def _search_dirs() -> list[str]:
  """Where system allocators live: the environment's prefix, LD_LIBRARY_PATH, the usual dirs."""
  multiarch = sysconfig.get_config_var("MULTIARCH") or ""
  dirs = [os.path.join(sys.prefix, "lib"),
          *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
  for root in ("/usr/lib", "/lib", "/usr/local/lib"):
    if multiarch:
      dirs.append(os.path.join(root, multiarch))
    dirs.append(root)
  dirs += ["/usr/lib64", "/lib64"]
  return list(dict.fromkeys(dirs))


def find_system_library(stems: tuple[str, ...], dirs: list[str] | None = None) -> str | None:
  """The first `lib<stem>.so*` in `dirs` (default: `_search_dirs()`), else the loader's cache."""
  for stem in stems:
    for directory in _search_dirs() if dirs is None else dirs:
      matches = sorted(glob.glob(os.path.join(glob.escape(directory), f"lib{stem}.so*")),
                       key=len)
      matches = [m for m in matches if re.search(rf"lib{stem}\.so(\.\d+)*$", m)]
      if matches:
        return os.path.realpath(matches[0])
    if dirs is None:
      soname = ctypes.util.find_library(stem)
      if soname:
        return soname  # a name the dynamic loader resolves through its cache
  return None


def find_tcmalloc() -> str | None:
  """tcmalloc's shared library on this machine, or None."""
  return find_system_library(_TCMALLOC_STEMS)


def _mapped_files() -> list[str]:
  """The files mapped into this process (/proc/self/maps), in order; [] where unreadable."""
  try:
    with open("/proc/self/maps", encoding="utf-8") as maps:
      lines = maps.read().splitlines()
  except OSError:
    return []
  fields = (line.split(maxsplit=5) for line in lines)
  return list(dict.fromkeys(f[5] for f in fields if len(f) == 6 and f[5].startswith("/")))


def loaded_allocator(library: str | None = None) -> str | None:
  """The path of a non-glibc allocator (or of `library`) mapped into this process, or None."""
  wanted = os.path.realpath(library) if library and os.path.isabs(library) else None
  for path in _mapped_files():
    if path == wanted or _ALLOCATOR_FILE.match(os.path.basename(path)):
      return path
  return None


def _library_for(choice: str) -> str | None:
  """The library `choice` asks to preload; None for the C library's malloc.

  Raises:
    MallocError: When an allocator named explicitly is not found.
  """
  if choice == SYSTEM:
    return None
  if choice in (AUTO, TCMALLOC):
    path = find_tcmalloc()
    if path is None and choice == TCMALLOC:
      raise MallocError(f"--malloc=tcmalloc: no libtcmalloc_minimal.so or libtcmalloc.so found "
                        f"({_INSTALL_HINT}; or pass its path)")
    return path
  if not os.path.isfile(choice):
    raise MallocError(f"--malloc={choice}: not auto, system, tcmalloc or a file")
  return os.path.realpath(choice)


def preload_environment(library: str, environ: dict[str, str]) -> dict[str, str]:
  """`environ` with `library` first in `LD_PRELOAD` and the re-exec marker set."""
  env = dict(environ)
  env["LD_PRELOAD"] = ":".join(filter(None, [library, environ.get("LD_PRELOAD", "")]))
  env[REEXEC_ENV] = library
  if "tcmalloc" in os.path.basename(library):
    for key, value in _TCMALLOC_QUIET.items():
      env.setdefault(key, value)
  return env


def reexec_argv() -> list[str]:
  """The command line that started this process, with this interpreter's full path."""
  return [sys.executable, *sys.orig_argv[1:]]


def ensure(choice: str = AUTO, *, may_reexec: bool) -> str:
  """Makes this process run on the allocator `choice` names; returns one line saying which.

  Re-executes the program (the call does not return) when a library has to be preloaded
  and `may_reexec`; pass `may_reexec=False` where this process was not started to run the
  caller's program (a function called in-process by another program or a test).

  Args:
    choice: `auto`, `system`, `tcmalloc` or a library's path.
    may_reexec: Whether re-running `sys.orig_argv` reruns the caller's program.

  Returns:
    The allocator in use, for the log (also logged).

  Raises:
    MallocError: For an allocator named explicitly that is not found, or one that could not
      be preloaded.
  """
  intended = os.environ.pop(REEXEC_ENV, None)  # children of this process start afresh
  mapped = loaded_allocator(intended)
  if mapped:
    return _report(f"{_name(mapped)} ({mapped})")
  if intended:  # re-executed with LD_PRELOAD, and yet nothing is mapped
    message = (f"--malloc={choice}: {intended} could not be preloaded (the loader's message is "
               f"above); {_WHY_SLOW}")
    if choice != AUTO:
      raise MallocError(message)
    return _report(f"glibc malloc: {message}", warn=True)
  if not sys.platform.startswith("linux"):
    if choice not in (AUTO, SYSTEM):
      raise MallocError(f"--malloc={choice}: preloading is implemented on Linux only")
    return _report(f"the system's malloc ({sys.platform})")
  library = _library_for(choice)
  if library is None:
    if choice == SYSTEM:
      return _report("glibc malloc (--malloc=system)")
    return _report(f"glibc malloc: tcmalloc not found ({_INSTALL_HINT}; --malloc=system "
                   f"silences this); {_WHY_SLOW}", warn=True)
  if not may_reexec:
    return _report(f"glibc malloc: {library} is not preloaded (not this program's own process; "
                   f"run it with LD_PRELOAD={library})", warn=True)
  logging.info("C heap: re-executing with LD_PRELOAD=%s", library)
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, reexec_argv(), preload_environment(library, dict(os.environ)))
  raise AssertionError("unreachable: execve returned")  # pragma: no cover


def ensure_or_exit(choice: str, *, may_reexec: bool) -> str:
  """`ensure` for a command line: a `MallocError` exits with one `error:` line (status 1)."""
  try:
    return ensure(choice, may_reexec=may_reexec)
  except MallocError as error:
    sys.exit(f"error: {error}")


def describe() -> str:
  """The allocator in use, as `ensure` reports it, without changing anything."""
  mapped = loaded_allocator()
  if mapped:
    return f"{_name(mapped)} ({mapped})"
  return "glibc malloc" if sys.platform.startswith("linux") else f"system ({sys.platform})"


def _name(path: str) -> str:
  match = _ALLOCATOR_FILE.match(os.path.basename(path))
  return "tcmalloc" if match and match.group(1).startswith("tcmalloc") else (
      match.group(1) if match else os.path.basename(path))


def _report(line: str, warn: bool = False) -> str:
  (logging.warning if warn else logging.info)("C heap: %s", line)
  return line
