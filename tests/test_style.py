"""The code base stays ruff clean (rules in pyproject.toml)."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow  # a subprocess
def test_ruff_clean():
  ruff = shutil.which("ruff") or f"{sys.prefix}/bin/ruff"
  result = subprocess.run([ruff, "check", "."], cwd=REPO_ROOT, capture_output=True, check=False, text=True)
  assert result.returncode == 0, result.stdout[-5000:]
