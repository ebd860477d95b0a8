"""How a step runs over the devices: data parallelism by `jax.jit` over a Mesh (default) or `jax.pmap`.

Both strategies run the same pure `train_step` / `eval_step` and differ only in where the data-parallel
reduction is written:

* `jit` (default): a 1-D `Mesh` with a `data` axis over every device. Batches are split along their first
  dimension with a `NamedSharding`; parameters and optimizer state are replicated; XLA inserts the gradient
  all-reduce that the shardings imply. The global batch is the config's `batch_size`.
* `pmap`: the classic form the design started from. State is replicated with a leading device axis, each
  device gets `batch_size / n` examples, and the step averages gradients with an explicit `pmean`. `pmap`
  is in maintenance mode in JAX (now built on jit and shard_map); it is kept as an alternative and a check.

Checkpoints always hold the plain (unreplicated) state, so either strategy resumes the other's run.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
STRATEGIES = ("jit", "pmap")


class DispatchWindow:
  """Lets a loop run at most `depth` iterations ahead of the devices: each call hands back what it is
  given, after waiting for what it was given `depth` calls before.

  Why not let JAX's asynchronous dispatch run free: XLA's CPU client runs every local device's programs
  on one thread pool and holds at most 32 programs in flight per device. With several CPU devices in one
  process (`--xla_force_host_platform_device_count`), programs with collectives dispatched past that
  depth deadlock in the pool, and XLA aborts the process a minute later ("Termination timeout for `all
  reduce ...`"). Measured with 4 simulated devices (jaxlib 0.10.2, 2-core AMD EPYC): a jitted step with an
  all-reduce, chained through its state, ran when dispatched 33 times without waiting and aborted at 40;
  independent ones ran with 32 in flight and aborted with 33. A loop iteration here dispatches up to about
  7 programs (batch slices, the step, the sums), so two iterations stay well inside the limit, while a
  GPU or TPU still has the next step queued when it finishes one.
  """

  def __init__(self, depth: int = 2):
    if depth < 1:
      raise ValueError(f"depth must be >= 1, got {depth}")
    self._pending: collections.deque = collections.deque()
    self._depth = depth

  def __call__(self, outputs: Any) -> Any:
    self._pending.append(outputs)
    if len(self._pending) > self._depth:
      jax.block_until_ready(self._pending.popleft())
    return outputs


def create_mesh(devices: list | None = None) -> Mesh:
  """A mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


class JitDataParallel:
  """One `jax.jit` program over the mesh; the state's buffers are donated."""

  name = "jit"
  batch_norm_axis_name = None  # Under jit, batch statistics are already over the global batch.

  def __init__(self, mesh: Mesh):
    self.data_mesh = mesh  # custom calls (the oneDNN convolution) run per shard over its data axis
    self.replicated = replicated(mesh)
    self.batch_sharding = batch_sharding(mesh)

  def place_state(self, state: Any) -> Any:
    return jax.device_put(state, self.replicated)

  def logical_state(self, state: Any) -> Any:
    """One logical copy of the state (what checkpoints and fingerprints see): already so under jit."""
    return state

  def compile_train(self, step_fn: Callable) -> Callable:
    return jax.jit(step_fn, in_shardings=(self.replicated, self.batch_sharding, self.replicated),
                   out_shardings=(self.replicated, self.replicated), donate_argnums=0)

  def compile_eval(self, eval_fn: Callable) -> Callable:
    compiled = jax.jit(eval_fn, in_shardings=(self.replicated, self.batch_sharding),
                       out_shardings=self.replicated)
    return lambda state, batch: compiled(state, self.shard_batch(batch))

  def shard_batch(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """This process's part of a batch -> the global batch, split over the mesh's data axis."""
    if jax.process_count() == 1:
      return jax.device_put(batch, self.batch_sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        self.batch_sharding, np.asarray(x)), batch)


class PmapDataParallel:
  """`jax.pmap` over the local devices with explicit `pmean` / `psum` over the `data` axis."""

  name = "pmap"
  batch_norm_axis_name = DATA_AXIS
  data_mesh = None  # each device already runs its own shard

  def __init__(self, devices: list | None = None):
    self.devices = jax.local_devices() if devices is None else devices
    self._leading_axis_sharding = batch_sharding(create_mesh(self.devices))

  def place_state(self, state: Any) -> Any:
    return flax.jax_utils.replicate(state, self.devices)

  def logical_state(self, state: Any) -> Any:
    """One logical copy of the state: the first device's (all are equal)."""
    return flax.jax_utils.unreplicate(state)

  def compile_train(self, step_fn: Callable) -> Callable:
    return jax.pmap(functools.partial(step_fn, axis_name=DATA_AXIS), axis_name=DATA_AXIS,
                    in_axes=(0, 0, None), donate_argnums=0, devices=self.devices)

  def compile_eval(self, eval_fn: Callable) -> Callable:
    compiled = jax.pmap(functools.partial(eval_fn, axis_name=DATA_AXIS), axis_name=DATA_AXIS,
                        devices=self.devices)
    # Every device holds the same psum; keep one copy.
    return lambda state, batch: jax.tree.map(lambda x: x[0], compiled(state, self.shard_batch(batch)))

  def shard_batch(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """(B, ...) -> (devices, B / devices, ...), the layout pmap maps over."""
    n = len(self.devices)
    return jax.device_put(jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch),
                          self._leading_axis_sharding)


def create_strategy(name: str, mesh: Mesh | None = None) -> JitDataParallel | PmapDataParallel:
  if name == "jit":
    return JitDataParallel(mesh if mesh is not None else create_mesh())
  if name == "pmap":
    return PmapDataParallel()
  raise ValueError(f"unknown parallelism {name!r}; expected one of {STRATEGIES}")
