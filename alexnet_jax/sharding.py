"""Data parallelism over every device: a 1-D `Mesh` with a `data` axis.

Batches are split along their first dimension over the `data` axis; parameters and optimizer state
are replicated. The global batch is the config's `batch_size` however many devices there are; XLA
inserts the gradient all-reduce that the sharding implies.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(devices: list | None = None) -> Mesh:
  """A mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
