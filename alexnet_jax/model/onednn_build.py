"""Builds and loads the oneDNN convolution extension (`csrc/onednn_conv.cc`) on first use.

Why compile on first use rather than at install: the package keeps setuptools and a pure-Python wheel,
so the README's `pip install -e .` stays one quick command on every platform, including those where the
extension cannot exist (macOS, ARM, no compiler); there `auto` simply keeps XLA. The build is one `g++`
line of a few seconds against two things that are already installed: JAX's FFI headers
(`jax.ffi.include_dir()`) and the `onednn-devel-cpu-gomp` wheel's headers and `libdnnl.so.3`. The result
is cached under a key of the source, the jaxlib version and the oneDNN version, so it is built once per
environment and rebuilt whenever any of them changes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import time

import jax

SOURCE = pathlib.Path(__file__).with_name("csrc") / "onednn_conv.cc"
RUNTIME_DIST = "onednn-cpu-gomp"
HEADERS_DIST = "onednn-devel-cpu-gomp"
FORWARD_TARGET = "alexnet_onednn_conv_fwd"
BACKWARD_TARGET = "alexnet_onednn_conv_bwd"
KERNEL_GRADIENT_TARGET = "alexnet_onednn_conv_bwd_weights"
_HANDLER_SYMBOLS = {FORWARD_TARGET: "AlexnetOnednnConvFwd", BACKWARD_TARGET: "AlexnetOnednnConvBwd",
                    KERNEL_GRADIENT_TARGET: "AlexnetOnednnConvBwdWeights"}


class OnednnUnavailableError(RuntimeError):
  """The extension cannot be built or loaded here; the message says why, in one line."""


@dataclasses.dataclass(frozen=True)
class Extension:
  path: pathlib.Path
  onednn_version: str
  build_seconds: float  # 0.0 when it came from the cache
  has_bf16: bool  # oneDNN has bfloat16 convolutions on this CPU (AVX-512 and up; not AVX2-only CPUs)


def cache_dir() -> pathlib.Path:
  root = os.environ.get("ALEXNET_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alexnet_jax")
  return pathlib.Path(root) / "onednn"


def _dist_file(dist: str, suffix: str) -> pathlib.Path:
  """A file of an installed wheel, found through its RECORD (the venv's lib/ is off the loader path)."""
  try:
    files = importlib.metadata.distribution(dist).files or []
  except importlib.metadata.PackageNotFoundError:
    raise OnednnUnavailableError(
        f"the {dist} wheel is not installed (pip install {dist}==2023.2.0)") from None
  for file in files:
    if str(file).endswith(suffix):
      return pathlib.Path(file.locate()).resolve()
  raise OnednnUnavailableError(f"the {dist} wheel has no {suffix}")


def _cache_key(library: pathlib.Path) -> str:
  digest = hashlib.sha256(SOURCE.read_bytes())
  for part in (importlib.metadata.version("jaxlib"), importlib.metadata.version(RUNTIME_DIST), str(library)):
    digest.update(part.encode())
  return digest.hexdigest()[:16]


def _compile(output: pathlib.Path, library: pathlib.Path, include: pathlib.Path) -> None:
  compiler = os.environ.get("CXX", "g++")
  if shutil.which(compiler) is None:
    raise OnednnUnavailableError(f"no C++ compiler: {compiler!r} is not on PATH (install g++ or set CXX)")
  output.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target and rename: processes starting together never load a half-written file.
  with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
    partial = pathlib.Path(tmp) / output.name
    command = [compiler, "-O2", "-std=c++17", "-fopenmp", "-shared", "-fPIC", str(SOURCE), "-o", str(partial),
               f"-I{jax.ffi.include_dir()}", f"-I{include}", str(library), f"-Wl,-rpath,{library.parent}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      first_error = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr)
      raise OnednnUnavailableError(f"compiling {SOURCE.name} failed: {first_error.strip()}")
    os.replace(partial, output)


def library_path() -> pathlib.Path:
  """Where the extension for this environment is cached (whether or not it has been built yet)."""
  return cache_dir() / _cache_key(_dist_file(RUNTIME_DIST, "libdnnl.so.3")) / "libalexnet_onednn.so"


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


@functools.cache
def load() -> Extension:
  """Builds (once per environment) and loads the extension, and registers its FFI targets.

  A cached library that does not load (a truncated or corrupt file) is rebuilt once. Raises
  OnednnUnavailableError with a one-line reason where the extension cannot be had.
  """
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    raise OnednnUnavailableError(f"the oneDNN extension is built for x86-64 Linux only, not "
                                 f"{platform.system()} {platform.machine()}")
  library = _dist_file(RUNTIME_DIST, "libdnnl.so.3")
  include = _dist_file(HEADERS_DIST, "oneapi/dnnl/dnnl.hpp").parents[2]
  path = library_path()

  def build() -> float:
    start = time.perf_counter()
    _compile(path, library, include)
    return time.perf_counter() - start

  built_now = not path.exists()
  build_seconds = build() if built_now else 0.0
  try:
    lib = ctypes.CDLL(str(path))
  except OSError as error:
    if built_now:  # a fresh build that does not load: building it again would not do better
      raise OnednnUnavailableError(f"loading {path} failed: {_one_line(error)}") from None
    # The cached file is broken (truncated, corrupt): rebuild it once. A library that failed to load leaves
    # nothing loaded under its path, so the rebuilt file there loads afresh.
    try:
      build_seconds = build()
      lib = ctypes.CDLL(str(path))
    except (OnednnUnavailableError, OSError) as rebuild_error:
      raise OnednnUnavailableError(f"the cached {path} did not load ({_one_line(error)}) and rebuilding it "
                                   f"failed: {_one_line(rebuild_error)}") from None
  for target, symbol in _HANDLER_SYMBOLS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  lib.alexnet_onednn_version.restype = ctypes.c_char_p
  lib.alexnet_onednn_has_bf16.restype = ctypes.c_bool
  return Extension(path, lib.alexnet_onednn_version().decode(), build_seconds, lib.alexnet_onednn_has_bf16())


# --- Test hooks: what the library exposes for tests only (see csrc/onednn_conv.cc) --------------------

PRIMITIVE_KINDS = ("forward", "input_gradient", "kernel_gradient", "kernel_gradient_matmul")


def _library() -> ctypes.CDLL:
  # The loaded extension's own handle: dlopen of a path already loaded returns that same library.
  return ctypes.CDLL(str(load().path))


def primitive_counts() -> dict[str, int]:
  """How many oneDNN primitives of each kind this process has built (each is built on first use)."""
  counts = (ctypes.c_int64 * len(PRIMITIVE_KINDS))()
  _library().alexnet_onednn_primitive_counts(counts)
  return dict(zip(PRIMITIVE_KINDS, counts, strict=True))


def set_test_failure(failure: str | None) -> None:
  """Makes every later convolution call throw inside the library, before any work: "bad_alloc",
  "runtime_error" or "not_std" (an object that is no std::exception); None stops that. For tests of the
  handlers' error path only."""
  setter = _library().alexnet_onednn_set_test_failure
  setter.argtypes, setter.restype = [ctypes.c_char_p], ctypes.c_bool
  if not setter((failure or "").encode()):
    raise ValueError(f"unknown test failure {failure!r}")
