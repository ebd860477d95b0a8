"""A pytest plugin: XLA's compiled programs kept between test sessions (JAX's persistent compilation cache).

About thirty tests start a training process on the same small configs, and each would compile the same
programs again (a third of a smoke run's time); the fast tier reruns all of them each time it is run. JAX's
persistent cache lets every process after the first load them instead; the results are the same bits (a
deserialised executable is the same machine code). JAX's key covers the program, the compile options, the
backend and the jax/jaxlib versions, so an entry is never reused for another program, and the cache is kept
in pytest's own cache folder (git-ignored; `pytest --cache-clear` empties it): a second run of the tier
loads what the first compiled.

JAX writes an entry in place, so a folder written by two processes at once could hand one of them a half-
written entry; and its size cap, which would lock the folder, rescans the folder on every write. So each
process of a session (an xdist worker with the subprocesses it starts, or a lone pytest) compiles into a
folder of its own, first filled with hard links to the shared store's entries; when the session ends, its
controlling process links the new entries into the store (a link appears whole or not at all) and removes
the session's folders. Two sessions at once in one checkout never share a folder. A store past
_CACHE_MAX_BYTES is emptied when a session starts. Without pytest's cache (`-p no:cacheprovider`) the folder
is temporary. The tests whose point is that an independent process reproduces a run start theirs without it
(`without_compilation_cache`).
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

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
