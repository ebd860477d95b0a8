"""Training and evaluation: pure step functions and one top-to-bottom loop.

`train_step(state, batch, rng) -> (state, metrics)` and `eval_step(state, batch) -> sums` are pure.
`engine.Engine` compiles them with `jax.jit` over a device `Mesh` (batch sharded, state replicated and
donated) and feeds them each step's batch; `train_and_evaluate` is the loop's policy around it: logging,
evaluation, checkpoints, resume, preemption and the NaN guard.

Randomness: one key from `config.seed`, split by `fold_in` into init / train / data streams. Step s uses
`fold_in(train_rng, s)`; epoch e's example order uses `fold_in(data_rng, e)`. Nothing depends on how
many steps ran in this process, so a resumed run follows the uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from alexnet_jax import (
    augmentation,
    calibration,
    checkpointing,
    config_checks,
    engine,
    fingerprint,
    input_pipeline,
    metric_logging,
    models,
    parallel,
    trained_run,
)

# Exit status of a run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM, the shell's way).
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class TrainState(train_state.TrainState):
  """params, opt_state and step from Flax's TrainState, plus batch-norm statistics ({} if none)."""

  batch_stats: Any = flax.struct.field(default_factory=dict)

  def variables(self, use_ema: bool = False) -> dict[str, Any]:
    """The model's variables, what `model.apply` takes."""
    if use_ema:
      raise ValueError("this state keeps no moving average of its weights (config.ema_decay is 0)")
    return {"params": self.params, "batch_stats": self.batch_stats}


class EmaTrainState(TrainState):
  """A TrainState that also keeps the exponential moving average of its variables (config.ema_decay > 0).

  A class of its own rather than an always-present field: checkpoints of runs without the average keep
  exactly the tree they always had, so runs saved before it existed still resume.
  """

  # {"params": ..., "batch_stats": ...}: what `model.apply` takes, averaged over the steps (Polyak).
  ema: Any = flax.struct.field(default_factory=dict)

  def variables(self, use_ema: bool = False) -> dict[str, Any]:
    """The model's variables: the raw weights, or (use_ema) their moving average."""
    return self.ema if use_ema else super().variables()


class NonFiniteLossError(RuntimeError):
  """Training diverged; the last good checkpoint is kept."""


class Preempted(RuntimeError):  # noqa: N818 - an event, not a fault.
  """SIGTERM arrived; a checkpoint was saved."""


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """The static (compile-time) settings of the train step."""

  num_classes: int = 10
  label_smoothing: float = 0.0
  augment: bool = False
  max_translate: float = 0.0
  max_rotate: float = 0.0
  max_scale: float = 0.0
  elastic_alpha: float = 0.0  # 0: no elastic distortion
  elastic_sigma: float = 4.0
  max_stroke: float = 0.0  # 0: stroke widths as they are
  max_blur_sigma: float = 0.0  # 0: no blur
  ema_decay: float = 0.0  # 0: no moving average

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> StepOptions:
    return cls(num_classes=config.model.num_classes, label_smoothing=config.label_smoothing,
               augment=config.data.augment, max_translate=config.data.max_translate,
               max_rotate=config.data.max_rotate, max_scale=config.data.max_scale,
               elastic_alpha=config.data.get("elastic_alpha", 0.0),
               elastic_sigma=config.data.get("elastic_sigma", 4.0),
               max_stroke=config.data.get("max_stroke", 0.0),
               max_blur_sigma=config.data.get("max_blur_sigma", 0.0), ema_decay=config.get("ema_decay", 0.0))


# ----------------------------------------------------------------------------------------------------
# Pure functions.
# ----------------------------------------------------------------------------------------------------


def create_train_state(model: models.AlexNet, optimizer: optax.GradientTransformation,
                       rng: jax.Array, ema: bool = False) -> TrainState:
  """A fresh state; with `ema`, the moving average starts at the initial weights."""
  dummy = jnp.zeros((1, *models.INPUT_SHAPE), jnp.float32)
  variables = model.init({"params": rng, "dropout": rng}, dummy, train=False)
  state_class = EmaTrainState if ema else TrainState
  state = state_class.create(apply_fn=model.apply, params=variables["params"], tx=optimizer,
                             batch_stats=variables.get("batch_stats", {}))
  return state.replace(ema=jax.tree.map(jnp.copy, state.variables())) if ema else state


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """The moving average's decay at `step`: min(decay, (1 + step) / (10 + step)).

  The ramp (TensorFlow's ExponentialMovingAverage with num_updates) lets the average forget the random
  initial weights within the first few hundred steps; a fixed 0.999 would still hold e^-3 = 5% of them
  after 3,000 steps, which is most of a short run.
  """
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(state: EmaTrainState, previous_step: jax.Array, decay: float) -> EmaTrainState:
  """The moving average moved towards the state's (new) variables."""
  weight_of_new = 1.0 - ema_decay_at(previous_step, decay)
  return state.replace(ema=optax.incremental_update(state.variables(), state.ema, weight_of_new))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross entropy against (optionally smoothed) one-hot labels."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _per_example_keys(rng: jax.Array, local_batch: int, axis_name: str | None) -> jax.Array:
  """One key per example of the global batch, this device's slice of them under pmap, so that an
  example is augmented the same way whichever device holds it."""
  if axis_name is None:
    return jax.random.split(rng, local_batch)
  devices = jax.lax.psum(1, axis_name)
  keys = jax.random.split(rng, local_batch * devices)
  return jax.lax.dynamic_slice_in_dim(keys, jax.lax.axis_index(axis_name) * local_batch, local_batch)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               options: StepOptions, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a batch of uint8 images; returns the new state and batch-mean loss/accuracy.

  Under `jax.jit` the batch is the global one and XLA derives the gradient all-reduce from the
  shardings. Under `jax.pmap(..., axis_name=A)` each device sees its slice; pass `axis_name=A` and the
  gradients, metrics and batch statistics are averaged over the devices explicitly (`pmean`).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  augment_rng, dropout_rng = jax.random.split(step_rng)
  images = batch["image"].astype(jnp.float32)
  if options.augment:
    keys = _per_example_keys(augment_rng, images.shape[0], axis_name)
    images = augmentation.random_affine_with_keys(
        images, keys, max_translate=options.max_translate,
        max_rotate_deg=options.max_rotate, max_scale=options.max_scale,
        elastic_alpha=options.elastic_alpha, elastic_sigma=options.elastic_sigma,
        max_stroke=options.max_stroke, max_blur_sigma=options.max_blur_sigma)
  if axis_name is not None:  # Flax draws dropout masks per device: give each device its own key.
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
  images = input_pipeline.normalize(images)
  uses_batch_stats = bool(state.batch_stats)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if uses_batch_stats:
      logits, updates = state.apply_fn(variables, images, train=True, rngs={"dropout": dropout_rng},
                                       mutable=["batch_stats"])
    else:
      logits, updates = state.apply_fn(variables, images, train=True,
                                       rngs={"dropout": dropout_rng}), {}
    loss = cross_entropy(logits, batch["label"], options.label_smoothing).mean()
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
  if axis_name is not None:
    grads, batch_stats, metrics = jax.lax.pmean((grads, batch_stats, metrics), axis_name)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if options.ema_decay:
    new_state = update_ema(new_state, state.step, options.ema_decay)
  return new_state, metrics


def train_steps(state: TrainState, data: tuple[jax.Array, jax.Array], first_step: jax.Array, *,
                train_rng: jax.Array, data_rng: jax.Array, num_steps: int, steps_per_epoch: int,
                batch_size: int, options: StepOptions, batch_sharding: jax.sharding.Sharding | None = None
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """`num_steps` (<= steps_per_epoch) consecutive `train_step`s in one program (`lax.scan`), each
  gathering its batch on the device in the loop's order; returns the state and per-step metrics.

  `data` is the training split's (images, labels); `train_rng` and `data_rng` are the run's streams
  (engine.RngStreams). One dispatch then covers many steps, which pays where a step is shorter than the
  host's dispatch (GPUs at small batch).
  """
  images, labels = data
  # A dispatch spans at most two epochs, whose example orders are drawn once, not once per step.
  first_epoch = first_step // steps_per_epoch
  permutations = jnp.stack([input_pipeline.epoch_permutation(data_rng, first_epoch + i, images.shape[0])
                            for i in range(2)])

  def one_step(state, step):
    epoch, index = jnp.divmod(step, steps_per_epoch)
    batch = input_pipeline.take_batch(images, labels, permutations[epoch - first_epoch], index, batch_size)
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return train_step(state, batch, train_rng, options)

  return jax.lax.scan(one_step, state, first_step + jnp.arange(num_steps))


def eval_step(state: TrainState, batch: dict[str, jax.Array], axis_name: str | None = None,
              use_ema: bool = False) -> dict[str, jax.Array]:
  """Masked sums over one batch: padding examples (mask 0) count for nothing.

  Under pmap, pass `axis_name` and the sums are totalled over the devices (`psum`). `use_ema` evaluates
  the moving average of the weights instead of the weights themselves.
  """
  logits = state.apply_fn(state.variables(use_ema), input_pipeline.normalize(batch["image"]), train=False)
  mask = batch["mask"]
  sums = {
      "loss_sum": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
      "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
      "count": jnp.sum(mask),
  }
  return sums if axis_name is None else jax.lax.psum(sums, axis_name)


def all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# ----------------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------------


def evaluate_sums(eval_fn, state: TrainState, split: input_pipeline.Split, batch_size: int
                  ) -> dict[str, jax.Array]:
  """`eval_step`'s sums over every batch of a split (the last one padded and masked, never dropped)."""
  totals, window = None, parallel.DispatchWindow()
  for batch in input_pipeline.eval_batches(split, batch_size):
    sums = eval_fn(state, batch)
    totals = window(sums if totals is None else jax.tree.map(jnp.add, totals, sums))
  return totals


def evaluate_split(eval_fn, state: TrainState, split: input_pipeline.Split, batch_size: int
                   ) -> dict[str, float]:
  """Loss, accuracy and the exact number of examples counted over a whole split."""
  totals = jax.device_get(evaluate_sums(eval_fn, state, split, batch_size))
  count = float(totals["count"])
  return {"loss": float(totals["loss_sum"]) / count, "accuracy": float(totals["correct"]) / count,
          "count": int(round(count))}


# Fields that may differ when a run is resumed: where the data lives does not change the run.
_RESUMABLE_FIELDS = ("data.data_dir", "data.manual_dir")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json; refuses a workdir whose run was started with a different config."""
  path = os.path.join(workdir, "config.json")
  new = json.loads(json.dumps(config.to_dict()))
  if os.path.exists(path):
    with open(path) as f:
      old = _flatten(json.load(f))
    changed = sorted(k for k, v in _flatten(new).items()
                     if k not in _RESUMABLE_FIELDS and old.get(k, v) != v)
    if changed:
      raise config_checks.ConfigError(
          f"config.{changed[0]}: differs from the run already in {workdir} (changed: "
          f"{', '.join(changed)}); resume with the same config or use a new workdir")
  with open(path, "w") as f:
    json.dump(new, f, indent=2, sort_keys=True)



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


def _calibrate(run: engine.Engine, state: TrainState, splits: dict[str, Any], workdir: str, step: int
               ) -> dict[str, float]:
  """Fits the temperature of the run's model at `step` on validation and stores it with the run
  (calibration.py); returns the test split's calibration error before and after, for the record."""
  weights = "ema" if run.uses_ema else "raw"
  variables = jax.device_get(run.logical(state).variables(run.uses_ema))
  model = trained_run.TrainedRun(workdir, run.config, models.create_model(run.config.model), variables,
                                 step, weights)
  batch_size = run.config.eval_batch_size
  test = model.split_logits(splits["test"], batch_size) if "test" in splits else None
  entry = calibration.calibrate(workdir, weights, step, model.split_logits(splits["validation"], batch_size),
                                test)
  record = {"temperature": entry["temperature"]}
  if test is not None:
    record.update(test_ece=entry["test_ece_before"], test_ece_calibrated=entry["test_ece_after"])
  return record


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) a run in `workdir` and returns its final record.

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
  splits = run.load_data()
  total_steps, steps_per_epoch = run.total_steps, run.steps_per_epoch
  eval_every = steps_per_epoch if config.eval_every_steps == -1 else config.eval_every_steps
  state = run.initial_state()
  logging.info("parameters: %d", sum(x.size for x in jax.tree.leaves(state.params)))

  # --- Resume --------------------------------------------------------------------------------------
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep_latest=config.keep_latest_checkpoints,
      track_best="validation" in splits)
  restored, restored_step = checkpointer.restore_latest(state)
  if is_chief:  # Records written after the checkpoint we continue from describe a lost future.
    metric_logging.truncate_metrics(workdir, restored_step or 0)
  previous = metric_logging.read_metrics(workdir)
  elapsed_offset = max([r.get("elapsed_s", 0.0) for r in previous], default=0.0)
  if restored is not None:
    state = restored
    logging.info("resumed from the checkpoint at step %d", restored_step)
    if restored_step >= total_steps and previous and "params_sha256" in previous[-1]:
      logging.info("run already finished: params_sha256 %s", previous[-1]["params_sha256"])
      checkpointer.close()
      return previous[-1]
  state = run.place(state)
  step = restored_step or 0

  # --- What happens between steps ------------------------------------------------------------------
  writer = metric_logging.MetricWriter(workdir, enabled=is_chief)
  progress = metric_logging.ProgressLine(total_steps, config.batch_size, first_step=step)
  start_time = time.perf_counter()
  last_good_step = checkpointer.latest_step()
  finite_fn = jax.jit(all_finite)

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
        if run.uses_ema and (step == total_steps or config.get("eval_raw_during_training", True)):
          record.update({f"raw_{prefix}_{k}": v for k, v in run.evaluate(state, splits[name]).items()
                         if k != "count"})
    save(state, record.get("val_accuracy"))
    if step == total_steps:
      record["params_sha256"] = fingerprint.params_sha256(run.logical(state).params)
      record["library_versions"] = fingerprint.library_versions(run.model.conv_impl)
    record["elapsed_s"] = elapsed()
    if step == total_steps and is_chief and "validation" in splits:
      record.update(_calibrate(run, state, splits, workdir, step))
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
  if "test_ece_calibrated" in final_record:
    logging.info("calibration: temperature %.4f (fitted on validation); test calibration error %.4f -> "
                 "%.4f", final_record["temperature"], final_record["test_ece"],
                 final_record["test_ece_calibrated"])
  print(f"params_sha256 {final_record['params_sha256']}", flush=True)
  return final_record
