"""Building and loading the oneDNN extension: a cached library that does not load is rebuilt once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from alexnet_jax.model import cpu_kernels, onednn_build
from tests.conftest import REPO_ROOT

GARBAGE = b"not a shared library\n" * 64


def test_a_broken_cache_that_cannot_be_rebuilt_fails_in_one_line_and_auto_takes_xla(tmp_path, monkeypatch):
  """The cached file does not load and the rebuild fails too (no compiler): one line with both reasons.
  `load` proper is cached per process and has loaded the good library already, so its undecorated body
  runs here; nothing gets loaded, so this process is unchanged."""
  monkeypatch.setenv("ALEXNET_JAX_CACHE", str(tmp_path / "cache"))
  compiler = str(tmp_path / "no-such-compiler")
  monkeypatch.setenv("CXX", compiler)
  path = onednn_build.library_path()
  assert path.is_relative_to(tmp_path)
  path.parent.mkdir(parents=True)
  path.write_bytes(GARBAGE)
  with pytest.raises(onednn_build.OnednnUnavailableError) as raised:
    onednn_build.load.__wrapped__()
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(f"the cached {path} did not load ({path}: "), message
  assert message.endswith(f") and rebuilding it failed: no C++ compiler: {compiler!r} is not on PATH "
                          "(install g++ or set CXX)"), message
  assert path.read_bytes() == GARBAGE  # a failed build replaces nothing
  # What `conv_impl=auto` asks (through its once-per-process cache in resolve_conv_impl): no, so XLA.
  monkeypatch.setattr(onednn_build, "load", onednn_build.load.__wrapped__)
  assert not cpu_kernels._onednn_loads.__wrapped__()


_LOAD_OVER_GARBAGE = f"""
import jax.numpy as jnp
from alexnet_jax.model import cpu_kernels, onednn_build
path = onednn_build.library_path()
path.parent.mkdir(parents=True)
path.write_bytes({GARBAGE!r})
extension = onednn_build.load()
print(extension.path == path, extension.build_seconds > 0, cpu_kernels.resolve_conv_impl("auto"))
y = cpu_kernels.conv_general_dilated(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
print(y.ravel().tolist())
"""


@pytest.mark.slow  # a fresh process (load() is cached per process) and a build of the extension
def test_a_cached_library_that_does_not_load_is_rebuilt(tmp_path):
  env = {**os.environ, "ALEXNET_JAX_CACHE": str(tmp_path / "cache")}
  result = subprocess.run([sys.executable, "-c", _LOAD_OVER_GARBAGE], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines() == ["True True onednn", "[9.0, 9.0, 9.0, 9.0]"], result.stdout
  (library,) = (tmp_path / "cache").glob("onednn/*/libalexnet_onednn.so")
  assert library.read_bytes()[:4] == b"\x7fELF"
