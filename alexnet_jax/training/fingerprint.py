"""A run's fingerprint: the SHA-256 of its parameters' bytes in a fixed tree order, and the library
versions the bits depend on."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from typing import Any

import jax
import numpy as np

from alexnet_jax.model import onednn_build


def _local_copy(leaf: Any) -> Any:
  """A replicated array spread over several processes: any local copy holds all of it."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    return leaf.addressable_data(0)
  return leaf


def params_sha256(params: Any) -> str:
  """Hashes every leaf's path, dtype, shape and bytes, leaves sorted by path.

  Two runs with the same config and seed on the same platform must print the same value; any change to
  any parameter bit changes it.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  digest = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.ascontiguousarray(jax.device_get(_local_copy(leaf)))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


# The libraries whose versions decide a run's bits: the same config and seed give the same params_sha256
# only on the same kind of CPU with the same versions of these (requirements/lock-py311.txt pins them).
VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def library_versions(conv_impl: str | None = None) -> dict[str, str | None]:
  """Python's and VERSIONED_PACKAGES' versions; `onednn` is the extension's library version where the
  run's convolutions go through it (`conv_impl == "onednn"`), else None."""
  versions: dict[str, str | None] = {"python": platform.python_version()}
  for package in VERSIONED_PACKAGES:
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = None
  versions["onednn"] = None
  if conv_impl == "onednn":  # load() is cached: the extension is already built and loaded
    versions["onednn"] = onednn_build.load().onednn_version
  return versions
