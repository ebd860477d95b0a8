"""Orbax checkpoints: the latest few and the best by validation accuracy, saved asynchronously.

Orbax writes each checkpoint to a temporary directory and renames it when complete, and deletes old
checkpoints only after the newer one is finalised, so a kill at any moment leaves the previous checkpoints
intact. What Orbax cannot know is whether a finished checkpoint was later damaged (a truncated file, a disk
error): `restore_latest` tries the newest checkpoint first and, if it does not restore, moves it aside into
`corrupt/` (nothing is deleted) and falls back to the one before, with a warning.
"""

from __future__ import annotations

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
    self._manager = ocp.CheckpointManager(self.directory, options=options)

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
    """The newest checkpoint that restores, falling back past corrupt ones; (None, None) if none."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self.restore(step, target), step
      except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in many different ways.
        moved_to = self._quarantine(step)
        logging.warning("checkpoint at step %d does not restore (%s: %s); moved it to %s and "
                        "falling back to the previous one", step, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "", moved_to)
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
