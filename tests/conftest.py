"""Shared fixtures: the real MNIST files, prepared once per session with the real TFDS builder."""

from __future__ import annotations

import os
import pathlib

import pytest

from alexnet_jax import input_pipeline
from configs import smoke

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_FILES = input_pipeline.MNIST_FILES


def _mnist_manual_dir() -> pathlib.Path:
  """$MNIST_MANUAL_DIR, else the project's shared data beside the repository."""
  candidates = [os.environ.get("MNIST_MANUAL_DIR"), REPO_ROOT.parent / "shared" / "data" / "mnist"]
  for candidate in candidates:
    if candidate and all((pathlib.Path(candidate) / f).is_file() for f in MNIST_FILES):
      return pathlib.Path(candidate)
  pytest.fail("the real MNIST files are missing: set MNIST_MANUAL_DIR to a folder holding "
              f"{', '.join(MNIST_FILES)} (tests that train on real data must not be skipped)")


@pytest.fixture(scope="session")
def mnist_manual_dir() -> pathlib.Path:
  return _mnist_manual_dir()


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory, mnist_manual_dir) -> str:
  """A TFDS data_dir with `mnist` prepared from the original files (checksums verified by TFDS)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  input_pipeline.mnist_builder(str(data_dir), str(mnist_manual_dir))
  return str(data_dir)


@pytest.fixture
def smoke_config(mnist_data_dir):
  """configs/smoke.py pointed at the prepared data."""
  config = smoke.get_config()
  config.data.data_dir = mnist_data_dir
  return config
