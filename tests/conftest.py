"""Shared fixtures: the real MNIST files, prepared once per session with the real TFDS builder."""

from __future__ import annotations

import os
import pathlib

import pytest

from alexnet_jax import input_pipeline, train
from configs import default, smoke

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


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, mnist_data_dir) -> pathlib.Path:
  """The workdir of one finished smoke run, shared by the tests that only read it."""
  config = smoke.get_config()
  config.data.data_dir = mnist_data_dir
  workdir = tmp_path_factory.mktemp("smoke_run") / "run"
  train.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mnist_data_dir) -> tuple[pathlib.Path, dict]:
  """(workdir, final metrics) of a short real training run (~97%+ test accuracy, a few minutes): the
  default recipe on a narrower network and a shorter budget, so that CI affords it."""
  config = default.get_config()
  config.data.data_dir = mnist_data_dir
  config.model.width_multiplier = 0.5
  config.model.dense_width = 512
  config.batch_size = 64
  config.num_train_steps = 300
  config.eval_every_steps = 300
  config.checkpoint_every_steps = 300
  config.log_every_steps = 50
  workdir = tmp_path_factory.mktemp("trained_run") / "run"
  return workdir, train.train_and_evaluate(config, str(workdir))
