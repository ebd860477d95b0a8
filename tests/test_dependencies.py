"""pyproject.toml's dependencies resolve on the platforms people run this on, Python 3.11-3.13.

uv's `pip compile --python-platform` evaluates every dependency's markers for the target named (pip's
`--platform` still evaluates them for this machine), and resolves without installing anything. It needs the
package registry, so the tests are in the slow tier. `--only-binary :all:` asks for wheels, as a user of
that platform would install; `promise` (a pure-Python dependency of TFDS) publishes only a source archive,
which builds anywhere.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest

from tests.conftest import REPO_ROOT

PLATFORMS = ("x86_64-manylinux_2_28", "aarch64-manylinux_2_28", "aarch64-apple-darwin",
             "x86_64-pc-windows-msvc")
PYTHONS = ("3.11", "3.12", "3.13")


def _resolve(platform: str, python: str, output: pathlib.Path) -> dict[str, str]:
  uv = shutil.which("uv")
  assert uv, "uv is not installed (it is in the test extra: pip install -e '.[test]')"
  command = [uv, "pip", "compile", "pyproject.toml", "--python-platform", platform, "--python-version",
             python, "--only-binary", ":all:", "--no-binary", "promise", "--no-header", "--quiet",
             "--output-file", str(output)]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=600)
  reason = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
  assert result.returncode == 0, f"{platform}, Python {python}: does not resolve: {reason}"
  pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", output.read_text(), flags=re.MULTILINE)
  return {name.lower(): version for name, version in pins}


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_dependencies_resolve(platform, python, tmp_path):
  pins = _resolve(platform, python, tmp_path / "requirements.txt")
  for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets"):
    assert package in pins, f"{platform}, Python {python}: {package} missing from the resolution"
  # TFDS prepares `mnist` through TensorFlow: the CPU-only wheel where it exists, plain TF elsewhere.
  x86 = platform.startswith("x86_64")
  assert ("tensorflow-cpu" in pins) == x86 and ("tensorflow" in pins) != x86, sorted(pins)
  # The oneDNN convolutions' wheels exist for x86-64 Linux only; elsewhere `conv_impl=auto` is XLA's.
  linux_x86 = platform == "x86_64-manylinux_2_28"
  assert ("onednn-cpu-gomp" in pins) == linux_x86 and ("onednn-devel-cpu-gomp" in pins) == linux_x86


def test_the_lock_file_satisfies_pyproject_for_its_platform():
  """requirements/lock-py311.txt (Python 3.11, x86-64 Linux) pins every dependency pyproject.toml declares
  there, each at a version its specifier allows: installing from it installs this project as declared."""
  from packaging.requirements import Requirement  # noqa: PLC0415

  pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
  lock = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (REPO_ROOT / "requirements" / "lock-py311.txt")
                         .read_text(), flags=re.MULTILINE))
  pins = {name.lower().replace("_", "-"): version for name, version in lock.items()}
  target = {"python_version": "3.11", "python_full_version": "3.11.7", "platform_system": "Linux",
            "platform_machine": "x86_64", "sys_platform": "linux", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
  for line in pyproject["project"]["dependencies"]:
    requirement = Requirement(line)
    if requirement.marker is not None and not requirement.marker.evaluate(target):
      continue
    name = requirement.name.lower().replace("_", "-")
    assert name in pins, f"{name} is not in the lock file"
    assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
