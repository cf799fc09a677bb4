"""The test run's own setup (`conftest.py`, `helpers.py`): what every other test relies on."""

import os
import pathlib

import jax
import pytest

from tests import helpers


def test_eight_fake_devices_and_a_run_wide_xla_cache():
  assert len(jax.devices()) == 8
  assert pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).is_dir()


def test_the_default_run_compiles_unoptimised(pytestconfig):
  if pytestconfig.getoption("markexpr") != "not slow":
    pytest.skip("only the default run (-m 'not slow') lowers the compile level")
  levels = [f for f in os.environ["XLA_FLAGS"].split()
            if f.startswith("--xla_backend_optimization_level=")]
  assert len(levels) == 1  # conftest's level 0, or the user's own when $XLA_FLAGS had one


def test_one_device_subprocesses_keep_every_flag_but_the_device_count(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                     "--xla_backend_optimization_level=0")
  assert helpers.one_device_xla_flags() == "--xla_backend_optimization_level=0"
  result = helpers.run_python(["-c", "import jax, os; print(len(jax.devices()), "
                               "os.environ['XLA_FLAGS'])"])
  assert result.stdout.split() == ["1", "--xla_backend_optimization_level=0"]
