"""A run's fingerprint: the SHA-256 of its parameters' bytes in a fixed tree order."""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


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
