"""The training loop: when to log, evaluate, save and stop. How a step runs is `engine.Engine`'s.

`train_and_evaluate(config, workdir)` trains a run (or resumes it from its latest checkpoint) and returns
its final record. Around the steps it keeps the run's records (`metrics.jsonl`, TensorBoard), evaluates on
validation every epoch and on test at the end, saves checkpoints, stops cleanly on SIGTERM (exit 143 from
`main`), and stops with the last good checkpoint named when the loss or the parameters stop being finite.
Calibrating the finished run's probabilities is a stage of its own (inference/calibrate.py), which
`main` runs after this.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from alexnet_jax.training import checkpointing, engine, fingerprint, metric_logging, run_config, steps

# Exit status of a run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM, the shell's way).
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class NonFiniteLossError(RuntimeError):
  """Training diverged; the last good checkpoint is kept."""


class Preempted(RuntimeError):  # noqa: N818 - an event, not a fault.
  """SIGTERM arrived; a checkpoint was saved."""


# Fields that may differ when a run is resumed: where the data lives does not change the run.
_RESUMABLE_FIELDS = ("data.data_dir", "data.manual_dir")


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json; refuses a workdir whose run was started with a different config."""
  path = os.path.join(workdir, "config.json")
  new = json.loads(json.dumps(config.to_dict()))
  if os.path.exists(path):
    with open(path) as f:
      old = run_config.flatten(json.load(f))
    changed = sorted(k for k, v in run_config.flatten(new).items()
                     if k not in _RESUMABLE_FIELDS and old.get(k, v) != v)
    if changed:
      raise run_config.ConfigError(
          f"config.{changed[0]}: differs from the run already in {workdir} (changed: "
          f"{', '.join(changed)}); resume with the same config or use a new workdir")
  metric_logging.write_atomically(path, json.dumps(new, indent=2, sort_keys=True))



class _PreemptionFlag:
  """Turns SIGTERM into a flag that the loop polls between dispatches.

  Python runs signal handlers in the main thread only, and only the main thread may install one: called
  from another thread (a notebook's executor, a server), the loop runs without preemption handling.
  """

  def __init__(self):
    self.raised = False
    self._installed = threading.current_thread() is threading.main_thread()
    if self._installed:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def restore(self):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)


def _means(pending_metrics: list[dict[str, jax.Array]]) -> dict[str, float]:
  """Each metric's mean over every step since the last log (dispatches hold one or many), fetched from
  the device in one transfer."""
  fetched = jax.device_get(pending_metrics)
  return {key: float(np.mean(np.concatenate([np.ravel(m[key]) for m in fetched]))) for key in fetched[0]}


def _divergence_message(what: str, step: int, last_good_step: int | None, directory: str) -> str:
  return (f"{what} by step {step}; last good checkpoint: step {last_good_step} in {directory}; "
          "try a lower learning_rate")


def _finished_record(workdir: str, total_steps: int) -> dict[str, Any] | None:
  """The final record of a run that finished (its last record has a fingerprint at the last step, whose
  checkpoint is on disk), read without restoring anything."""
  records = metric_logging.read_metrics(workdir)
  if records and "params_sha256" in records[-1] and records[-1]["step"] >= total_steps and os.path.isdir(
      os.path.join(workdir, "checkpoints", str(records[-1]["step"]))):
    return records[-1]
  return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, start_over: bool = False
                       ) -> dict[str, Any]:
  """Trains (or resumes) a run in `workdir` and returns its final record.

  A finished run is reported as such before anything is restored. When the run has checkpoints and every
  one is damaged, it stops (AllCheckpointsDamagedError) unless `start_over`: then it trains from step 0.

  This is the loop's policy: when to log, evaluate, save and stop. How a step runs (devices, data order,
  compiled programs) is `engine.Engine`'s, shared with the experiments.
  """
  # --- Setup: config, devices, data, initial state -------------------------------------------------
  run = engine.Engine(config)
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_chief:
    _write_config(config, workdir)
  logging.info("devices: %d x %s, data-parallel by %s, convolutions by %s, compute dtype %s",
               jax.device_count(), jax.devices()[0].device_kind, run.strategy.name, run.model.conv_impl,
               jnp.dtype(run.model.dtype).name)
  total_steps, steps_per_epoch = run.total_steps, run.steps_per_epoch
  finished = _finished_record(workdir, total_steps)
  if finished is not None:
    logging.info("run already finished: params_sha256 %s", finished["params_sha256"])
    return finished
  splits = run.load_data()
  eval_every = steps_per_epoch if config.eval_every_steps == -1 else config.eval_every_steps
  state = run.initial_state()
  logging.info("parameters: %d", sum(x.size for x in jax.tree.leaves(state.params)))

  # --- Resume --------------------------------------------------------------------------------------
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep_latest=config.keep_latest_checkpoints,
      track_best="validation" in splits)
  try:
    restored, restored_step = checkpointer.restore_latest(state)
  except checkpointing.AllCheckpointsDamagedError as e:
    if not start_over:
      checkpointer.close()
      raise
    logging.warning("%s; starting over from step 0 as asked (--start_over)", e)
    restored, restored_step = None, None
  except checkpointing.CheckpointError:
    checkpointer.close()
    raise
  if is_chief:  # Records written after the checkpoint we continue from describe a lost future.
    metric_logging.truncate_metrics(workdir, restored_step or 0)
  previous = metric_logging.read_metrics(workdir)
  elapsed_offset = max([r.get("elapsed_s", 0.0) for r in previous], default=0.0)
  if restored is not None:
    state = restored
    logging.info("resumed from the checkpoint at step %d", restored_step)
  state = run.place(state)
  step = restored_step or 0

  # --- What happens between steps ------------------------------------------------------------------
  writer = metric_logging.MetricWriter(workdir, enabled=is_chief)
  progress = metric_logging.ProgressLine(total_steps, config.batch_size, first_step=step)
  start_time = time.perf_counter()
  last_good_step = checkpointer.latest_step()
  finite_fn = jax.jit(steps.all_finite)

  def elapsed() -> float:
    return round(elapsed_offset + time.perf_counter() - start_time, 3)

  def save(state, val_accuracy=None):
    nonlocal last_good_step
    state = run.logical(state)
    if not bool(finite_fn(state.params)):
      raise NonFiniteLossError(_divergence_message("parameters became non-finite", int(state.step),
                                                   last_good_step, checkpointer.directory))
    checkpointer.save(int(state.step), state, val_accuracy)
    last_good_step = int(state.step)

  def log_training(step, pending_metrics):
    means = _means(pending_metrics)
    loss, accuracy = means["loss"], means["accuracy"]
    if not np.isfinite(loss):
      raise NonFiniteLossError(_divergence_message(f"non-finite training loss ({loss})", step,
                                                   last_good_step, checkpointer.directory))
    images_per_s = progress.report(step, step / steps_per_epoch, loss, accuracy)
    writer.write(step, step / steps_per_epoch, train_loss=loss, train_accuracy=accuracy,
                 learning_rate=float(run.schedule(step - 1)), images_per_s=round(images_per_s, 2),
                 elapsed_s=elapsed())

  def evaluate_save_and_record(state, step) -> dict[str, Any]:
    jax.block_until_ready(state)  # Steps still in flight count as training time, not eval time.
    eval_start = time.perf_counter()
    record = {}
    for name in ("validation", "test"):
      if name in splits and (name == "validation" or config.eval_test_during_training
                             or step == total_steps):
        prefix = "val" if name == "validation" else name
        # The run's model (the moving average when there is one) gets the plain names; raw_ otherwise.
        record.update({f"{prefix}_{k}": v for k, v in
                       run.evaluate(state, splits[name], use_ema=run.uses_ema).items()})
        if run.uses_ema and (step == total_steps or config.eval_raw_during_training):
          record.update({f"raw_{prefix}_{k}": v for k, v in run.evaluate(state, splits[name]).items()
                         if k != "count"})
    save(state, record.get("val_accuracy"))
    if step == total_steps:
      record["params_sha256"] = fingerprint.params_sha256(run.logical(state).params)
      record["library_versions"] = fingerprint.library_versions(run.model.conv_impl)
    record["elapsed_s"] = elapsed()
    logging.info("step %d  %s", step, "  ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    progress.exclude(time.perf_counter() - eval_start)
    return writer.write(step, step / steps_per_epoch, **record)

  # --- Training loop -------------------------------------------------------------------------------
  logging.info("training %d steps (%d per epoch) from step %d", total_steps, steps_per_epoch, step)
  boundaries = (config.log_every_steps, eval_every, config.checkpoint_every_steps)
  preemption = _PreemptionFlag()
  pending_metrics, final_record = [], None
  try:
    while step < total_steps:
      num_steps = run.dispatch_length(step, boundaries)
      state, metrics = run.advance(state, step, num_steps)
      pending_metrics += metrics
      step += num_steps
      if not progress.started and step % config.log_every_steps and step < total_steps:
        jax.block_until_ready(state)  # the first dispatch compiles: the rate is timed from its end
        progress.start(step)
      if step % config.log_every_steps == 0 or step == total_steps:
        log_training(step, pending_metrics)
        pending_metrics = []
      if step % eval_every == 0 or step == total_steps:
        final_record = evaluate_save_and_record(state, step)
      elif step % config.checkpoint_every_steps == 0:
        save(state)
      if preemption.raised:
        save(state)
        checkpointer.wait_until_finished()
        raise Preempted(f"SIGTERM: saved the checkpoint at step {step} in "
                        f"{checkpointer.directory}; rerun the same command to resume")
    if final_record is None:  # Restored at the last step, killed before its final record was written.
      final_record = evaluate_save_and_record(state, step)
  finally:
    preemption.restore()
    writer.close()
    checkpointer.wait_until_finished()
    checkpointer.close()

  logging.info("finished: test accuracy %.4f over %d images in %.0f s of training",
               final_record["test_accuracy"], final_record["test_count"], final_record["elapsed_s"])
  print(f"params_sha256 {final_record['params_sha256']}", flush=True)
  return final_record
