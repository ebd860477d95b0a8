"""Shared fixtures and helpers.

Two tiers: `pytest -m "not slow"` (under two minutes once its programs are compiled) and the whole
suite. A test is `slow` when it needs the real MNIST files (any test using the `mnist_data_dir` fixture is
marked so automatically, below), starts subprocesses, or costs a whole extra training or more than the fast
tier's budget allows (marked where it is defined). The fast tier trains on `synthetic_mnist`: TFDS's reading
replaced by in-memory synthetic digits of MNIST's split sizes, everything after it the real code.
"""

from __future__ import annotations

import glob
import os
import pathlib
import re
import socket
from types import SimpleNamespace

import numpy as np
import pytest

from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import calibrate, calibration
from alexnet_jax.inference import trained_run as trained_run_module
from alexnet_jax.training import loop, metric_logging
from configs import default, smoke

# XLA's compiled programs are kept between sessions: tests/compilation_cache.py.
pytest_plugins = ["tests.compilation_cache"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_FILES = input_pipeline.MNIST_FILES


def pytest_collection_modifyitems(items):
  for item in items:
    if "mnist_data_dir" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.slow)


# --- Helpers -----------------------------------------------------------------------------------------


def saved_steps(workdir) -> list[int]:
  """The checkpoint steps on disk in a run's workdir."""
  directory = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def train_losses(records: list[dict]) -> np.ndarray:
  """The logged training losses of a run's metrics records."""
  return np.array([r["train_loss"] for r in records if "train_loss" in r])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def tensorboard_steps(workdir) -> dict[str, list[int]]:
  """tag -> the step of every scalar event in the run's TensorBoard files, in file order (repeats
  included: a reader would show each one)."""
  from tensorboard.backend.event_processing import event_file_loader  # noqa: PLC0415

  steps: dict[str, list[int]] = {}
  pattern = os.path.join(str(workdir), metric_logging.TENSORBOARD_DIR, metric_logging.EVENT_FILE_PREFIX + "*")
  for path in sorted(glob.glob(pattern)):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        steps.setdefault(value.tag, []).append(int(event.step))
  return steps


# --- Synthetic MNIST for the fast tier ----------------------------------------------------------------


def synthetic_digits(count: int, seed: int) -> dict[str, np.ndarray]:
  """Noisy 28x28 images whose class is the row of a bright bar: learnable within a few steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, (count,)).astype(np.int64)
  images = rng.integers(0, 60, (count, 28, 28, 1), dtype=np.uint8)
  rows = 2 * labels + 4
  for offset in range(3):
    images[np.arange(count), rows + offset, 4:24] = 255
  return {"image": images, "label": labels}


class _SyntheticBuilder:
  """Stands in for the prepared TFDS `mnist` builder: the same split names and sizes."""

  SIZES = {"train": input_pipeline.MNIST_TRAIN_SIZE, "test": 10000}

  def __init__(self):
    self._arrays = {name: synthetic_digits(size, seed)
                    for seed, (name, size) in enumerate(self.SIZES.items())}
    self.info = SimpleNamespace(splits=_SplitSizes(self))

  def read(self, split: str) -> dict[str, np.ndarray]:
    match = re.fullmatch(r"(train|test)(?:\[(\d*):(\d*)\])?", split)
    if match is None:
      raise ValueError(f"synthetic MNIST reads plain or [a:b] splits, not {split!r}")
    name, start, stop = match.groups()
    part = slice(int(start) if start else None, int(stop) if stop else None)
    return {key: value[part] for key, value in self._arrays[name].items()}


class _SplitSizes:
  def __init__(self, builder: _SyntheticBuilder):
    self._builder = builder

  def __getitem__(self, split: str) -> SimpleNamespace:
    return SimpleNamespace(num_examples=len(self._builder.read(split)["label"]))


@pytest.fixture(scope="session")
def _synthetic_builder() -> _SyntheticBuilder:
  return _SyntheticBuilder()


def _use_synthetic(monkeypatch: pytest.MonkeyPatch, builder: _SyntheticBuilder) -> None:
  monkeypatch.setattr(input_pipeline, "mnist_builder", lambda *args, **kwargs: builder)
  monkeypatch.setattr(input_pipeline, "_read_split", lambda builder, split: builder.read(split))


@pytest.fixture
def synthetic_mnist(monkeypatch, _synthetic_builder) -> _SyntheticBuilder:
  """TFDS `mnist` replaced, for this test, by synthetic digits of MNIST's split sizes."""
  _use_synthetic(monkeypatch, _synthetic_builder)
  return _synthetic_builder


def _synthetic_config():
  config = smoke.get_config()
  config.num_train_steps = 8
  config.eval_every_steps = config.checkpoint_every_steps = 4
  config.log_every_steps = 2
  return config


@pytest.fixture
def synthetic_config(synthetic_mnist):
  """configs/smoke.py, shortened to 8 steps, on synthetic MNIST."""
  del synthetic_mnist
  return _synthetic_config()


def train_and_calibrate(config, workdir: str) -> dict:
  """What `python -m alexnet_jax.main` does in one process: the training stage, then the calibration
  stage; returns the final record of metrics.jsonl."""
  final = loop.train_and_evaluate(config, workdir)
  calibrate.calibrate_run(workdir)
  return final


def final_calibration(workdir: str) -> dict:
  """The calibration stage's entry for the run's model at its final step."""
  final = metric_logging.read_metrics(str(workdir))[-1]
  weights = trained_run_module.resolve_weights(trained_run_module.load_config(str(workdir)), "auto")
  return calibration.read_entries(str(workdir))[calibration.entry_key(weights, final["step"])]


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory, _synthetic_builder) -> tuple[pathlib.Path, dict]:
  """(workdir, final record) of one finished `synthetic_config` run, shared by tests that only read it
  (or copy it)."""
  workdir = tmp_path_factory.mktemp("synthetic_run") / "run"
  with pytest.MonkeyPatch.context() as monkeypatch:
    _use_synthetic(monkeypatch, _synthetic_builder)
    return workdir, train_and_calibrate(_synthetic_config(), str(workdir))


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
  train_and_calibrate(config, str(workdir))
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
  return workdir, train_and_calibrate(config, str(workdir))
