"""Orbax checkpoints: the latest few and the best by validation accuracy, saved asynchronously.

Orbax writes each checkpoint to a temporary directory and renames it when complete, and deletes old
checkpoints only after the newer one is finalised, so a kill at any moment leaves the previous checkpoints
intact. What Orbax cannot know is whether a finished checkpoint was later damaged (a truncated file, a disk
error): `restore_latest` tries the newest checkpoint first and, if it is proven damaged (`is_damage`: the
errors Orbax and TensorStore give for truncated, missing or undecodable files and unreadable metadata),
moves it aside into `corrupt_checkpoints/` (nothing is deleted) and falls back to the one before, with a
warning. Any other failure (no permission, a full disk, no memory, a state tree that changed) is not
damage: it stops with one line naming the checkpoint and the cause, and nothing is moved.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

BEST_METRIC = "val_accuracy"
CHECKPOINT_CHOICES = ("best", "latest")
ITEM_NAME = "default"  # where CheckpointManager puts a single unnamed item


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was asked for."""


class AllCheckpointsDamagedError(CheckpointError):
  """A run had checkpoints and every one of them was damaged (all moved aside)."""


# TensorStore's status codes (the start of its errors' messages) for files that are truncated, missing or
# do not decode; PERMISSION_DENIED, RESOURCE_EXHAUSTED and the rest say nothing about the bytes.
_DAMAGE_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND")
_NOT_DAMAGE_CODES = ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "ABORTED")


def _chain(error: BaseException) -> list[BaseException]:
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def is_damage(error: BaseException) -> bool:
  """Whether a failed restore proves the checkpoint's bytes damaged: an undecodable metadata file, a
  missing file, or TensorStore's DATA_LOSS / OUT_OF_RANGE / NOT_FOUND; and nothing in the error's chain
  points elsewhere (no permission, no memory, no space)."""
  chain = _chain(error)
  for e in chain:
    if isinstance(e, (PermissionError, MemoryError)) or (
        isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno is not None):
      return False
    if str(e).startswith(_NOT_DAMAGE_CODES):
      return False
  return any(isinstance(e, (json.JSONDecodeError, FileNotFoundError)) or str(e).startswith(_DAMAGE_CODES)
             for e in chain)


def describe(error: BaseException) -> str:
  """The first line of an error, with its type: what a one-line message shows of it."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def abstract_like(state: Any) -> Any:
  """The restore target: shapes, dtypes and shardings of `state`, no data."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpointer:
  """A thin policy layer over `ocp.CheckpointManager` for one run's `workdir/checkpoints`."""

  def __init__(self, directory: str, keep_latest: int = 2, track_best: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policies = [ocp.checkpoint_managers.LatestN(n=keep_latest)]
    if track_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[BEST_METRIC], reverse=False, n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=(lambda metrics: metrics[BEST_METRIC]) if track_best else None,
        best_mode="max",
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=True,
    )
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except OSError as e:  # unreadable or unwritable: the run cannot know what it holds
      raise CheckpointError(f"{self.directory}: cannot open the checkpoints ({describe(e)})") from None

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def save(self, step: int, state: Any, val_accuracy: float | None = None) -> None:
    """Starts an asynchronous save of `state` at `step` (a no-op if that step is already saved)."""
    if step in self._manager.all_steps():
      return
    metrics = None if val_accuracy is None else {BEST_METRIC: float(val_accuracy)}
    self._manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)

  def restore(self, step: int, target: Any) -> Any:
    """Restores `step` into the structure, dtypes and shardings of `target`."""
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))

  def restore_subtree(self, step: int, target: Any) -> Any:
    """Restores only the leaves named in `target`, a subtree of what was saved (for inference: params
    and batch statistics, not the optimizer state), as host arrays."""
    # A PyTree checkpointer of its own: the manager binds its item to the StandardSave handler, which
    # has no partial restore; both write the same format.
    path = os.path.join(self.directory, str(step), ITEM_NAME)
    with ocp.PyTreeCheckpointer() as checkpointer:
      return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))

  def restore_latest(self, target: Any) -> tuple[Any, int] | tuple[None, None]:
    """The newest checkpoint that restores; (None, None) if there is none.

    A checkpoint proven damaged (`is_damage`) is moved aside and the one before it tried. Any other
    failure raises CheckpointError and moves nothing; so does a run whose checkpoints were all damaged
    (AllCheckpointsDamagedError): it never silently starts over.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        return self.restore(step, target), step
      except Exception as e:  # noqa: BLE001 - sorted below into damage and everything else
        if not is_damage(e):
          raise CheckpointError(
              f"checkpoint at step {step} in {self.directory} cannot be read ({describe(e)}); nothing was "
              "moved or changed: fix the cause and rerun") from e
        moved_to = self._quarantine(step)
        logging.warning("checkpoint at step %d is damaged (%s); moved it to %s and falling back to the "
                        "previous one", step, describe(e), moved_to)
    if steps:
      raise AllCheckpointsDamagedError(
          f"every checkpoint in {self.directory} was damaged (steps {sorted(steps)}, moved to "
          f"{os.path.join(os.path.dirname(self.directory), 'corrupt_checkpoints')}); rerun with "
          "--start_over to train again from step 0")
    return None, None

  def _quarantine(self, step: int) -> str:
    """Moves a damaged checkpoint out of the manager's sight, keeping its bytes for inspection."""
    source = os.path.join(self.directory, str(step))
    target = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints",
                          f"{step}-{int(time.time())}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
    self._manager.reload()
    return target

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def resolve_step(checkpointer: Checkpointer, which: str) -> int:
  """'latest', 'best' or a step number -> a saved step, or CheckpointError naming what is missing."""
  steps = checkpointer.all_steps()
  if not steps:
    raise CheckpointError(f"no checkpoints in {checkpointer.directory}")
  if which == "latest":
    return steps[-1]
  if which == "best":
    best = checkpointer.best_step()
    if best is None:  # Orbax would restore the latest instead: say so rather than guess.
      raise CheckpointError(f"no checkpoint in {checkpointer.directory} carries a validation accuracy to "
                            "rank by (trained with data.validation_size=0?); use latest or a step")
    return best
  if which.isdigit() and int(which) in steps:
    return int(which)
  raise CheckpointError(f"checkpoint {which!r} not found in {checkpointer.directory}; "
                        f"saved steps: {steps}")
