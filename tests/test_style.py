"""The code base stays ruff clean (rules in pyproject.toml)."""

import shutil
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_ruff_clean():
  ruff = shutil.which("ruff") or f"{sys.prefix}/bin/ruff"
  result = subprocess.run([ruff, "check", "."], cwd=REPO_ROOT, capture_output=True, check=False, text=True)
  assert result.returncode == 0, result.stdout[-5000:]
