"""Shared fixtures and helpers.

Two tiers: `pytest -m "not slow"` (under two minutes once its programs are compiled) and the whole
suite. A test is `slow` when it needs the real MNIST files (any test using the `mnist_data_dir` fixture is
marked so automatically, below), starts subprocesses, or costs a whole extra training or more than the fast
tier's budget allows (marked where it is defined). The fast tier trains on `synthetic_mnist`: TFDS's reading
replaced by in-memory synthetic digits of MNIST's split sizes, everything after it the real code.
"""

from __future__ import annotations

import atexit
import glob
import os
import pathlib
import re
import shutil
import socket
import tempfile
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from alexnet_jax import input_pipeline, metric_logging, train
from configs import default, smoke

# --- XLA compilation cache, kept between sessions ----------------------------------------------------
# About thirty tests start a training process on the same small configs, and each would compile the same
# programs again (about 6 of a smoke run's 21 s on a 2-core CPU); the fast tier reruns all of them each
# time it is run. JAX's persistent cache lets every process after the first load them instead; the
# results are the same bits (a deserialised executable is the same machine code). JAX's key covers the
# program, the compile options, the backend and the jax/jaxlib versions, so an entry is never reused for
# another program, and the cache is kept in pytest's own cache folder (git-ignored; `pytest --cache-clear`
# empties it): a second run of the tier loads what the first compiled.
# JAX writes an entry in place, so a folder written by two processes at once could hand one of them a
# half-written entry; and its size cap, which would lock the folder, rescans the folder on every write
# (about a minute of system time in a cold fast tier). So each process of a session (an xdist worker with
# the subprocesses it starts, or a lone pytest) compiles into a folder of its own, first filled with hard
# links to the shared store's entries; when the session ends, its controlling process links the new
# entries into the store (a link appears whole or not at all) and removes the session's folders. Two
# sessions at once in one checkout never share a folder. A store past _CACHE_MAX_BYTES is emptied when a
# session starts. Without pytest's cache (`-p no:cacheprovider`) the folder is temporary. The tests whose
# point is that an independent process reproduces a run start theirs without it
# (`without_compilation_cache`).
_CACHE_STORE = "xla_compilation_cache"
_CACHE_MAX_BYTES = 1 << 30
COMPILATION_CACHE_ENV: dict[str, str] = {}


def _link_missing_entries(source: pathlib.Path, target: pathlib.Path) -> None:
  for entry in source.iterdir():
    if not (target / entry.name).exists():
      try:
        os.link(entry, target / entry.name)
      except FileExistsError:  # another session linked the same entry a moment ago
        pass
      except OSError:  # a file system without hard links
        shutil.copy2(entry, target / entry.name)


def _is_controller(config: pytest.Config) -> bool:
  return not hasattr(config, "workerinput")  # xdist gives its workers a `workerinput`


def _session_prefix() -> str:
  # The controlling process names the session after its pid; xdist workers inherit the name through the
  # environment.
  return f"{_CACHE_STORE}_{os.environ.setdefault('ALEXNET_JAX_TEST_SESSION', str(os.getpid()))}_"


def _is_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    pass
  return True


def _remove_dead_sessions_folders(store: pathlib.Path) -> None:
  """Folders of sessions that were killed before they could merge them (their entries may be torn); one
  named for this process's own pid is a dead session's too, as this session has not made its folders yet."""
  for folder in store.parent.glob(f"{_CACHE_STORE}_*_*"):
    pid = int(folder.name.split("_")[-2])
    if pid == os.getpid() or not _is_alive(pid):
      shutil.rmtree(folder, ignore_errors=True)


def _process_cache_dir(config: pytest.Config) -> str:
  cache = getattr(config, "cache", None)
  if cache is None:
    path = tempfile.mkdtemp(prefix="alexnet_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
  store = cache.mkdir(_CACHE_STORE)
  if _is_controller(config):
    _remove_dead_sessions_folders(store)
    if sum(f.stat().st_size for f in store.iterdir()) > _CACHE_MAX_BYTES:
      shutil.rmtree(store)
      store = cache.mkdir(_CACHE_STORE)
  own = cache.mkdir(_session_prefix() + os.environ.get("PYTEST_XDIST_WORKER", "main"))
  _link_missing_entries(store, own)
  return str(own)


def pytest_configure(config: pytest.Config) -> None:
  cache_dir = _process_cache_dir(config)
  COMPILATION_CACHE_ENV.update({
      "JAX_COMPILATION_CACHE_DIR": cache_dir,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # default 1 s: most programs here compile faster
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      # By default JAX puts a GPU autotuning folder inside the cache folder into every program's compile
      # options, which are part of the key: each process's folder would then key its own entries apart.
      "JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES": "none",
  })
  os.environ.update(COMPILATION_CACHE_ENV)  # inherited by every subprocess the tests start
  # This process imported JAX before these were set: the same settings through its config.
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_persistent_cache_enable_xla_caches", "none")


def pytest_unconfigure(config: pytest.Config) -> None:
  cache = getattr(config, "cache", None)
  if cache is None or not _is_controller(config):
    return
  store = cache.mkdir(_CACHE_STORE)
  for own in store.parent.glob(_session_prefix() + "*"):
    _link_missing_entries(own, store)
    shutil.rmtree(own, ignore_errors=True)


def without_compilation_cache() -> dict[str, str]:
  """This process's environment for a subprocess that compiles everything itself."""
  return {k: v for k, v in os.environ.items() if k not in COMPILATION_CACHE_ENV}

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


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory, _synthetic_builder) -> tuple[pathlib.Path, dict]:
  """(workdir, final record) of one finished `synthetic_config` run, shared by tests that only read it
  (or copy it)."""
  workdir = tmp_path_factory.mktemp("synthetic_run") / "run"
  with pytest.MonkeyPatch.context() as monkeypatch:
    _use_synthetic(monkeypatch, _synthetic_builder)
    return workdir, train.train_and_evaluate(_synthetic_config(), str(workdir))


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
