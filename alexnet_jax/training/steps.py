"""The pure functions of training and evaluation, at the bottom of the training stack.

`train_step(state, batch, rng, config) -> (state, metrics)` and `eval_step(state, batch) -> sums` are pure:
parameters in, parameters out. Both take a batch as a dict of `image` (uint8, N x 28 x 28 x 1) and `label`;
evaluation batches also carry `mask` (1 for a real example, 0 for padding). The train step reads its
settings from the run's config directly (`config.data` for augmentation, `config.label_smoothing`,
`config.ema_decay`): a new knob is a field in configs/default.py and the line that uses it.

`engine.Engine` compiles these with `jax.jit` over a device `Mesh`; `loop.train_and_evaluate` decides
when to log, evaluate and save. This module imports neither.

Randomness: step s draws its augmentation and dropout from `fold_in(rng, s)`, where `rng` is the run's
training stream (engine.RngStreams): nothing depends on how many steps ran in this process, so a resumed
run follows the uninterrupted one bit for bit.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from alexnet_jax.data import augmentation, input_pipeline
from alexnet_jax.model import alexnet
from alexnet_jax.training import parallel


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



def create_train_state(model: alexnet.AlexNet, optimizer: optax.GradientTransformation,
                       rng: jax.Array, ema: bool = False) -> TrainState:
  """A fresh state; with `ema`, the moving average starts at the initial weights."""
  dummy = jnp.zeros((1, *alexnet.INPUT_SHAPE), jnp.float32)
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
               config: ml_collections.FrozenConfigDict, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch of uint8 images; returns the new state and batch-mean loss/accuracy.

  `config` is the run's config (`data` for augmentation, `label_smoothing`, `ema_decay`); its values
  are fixed when the step is compiled.

  Under `jax.jit` the batch is the global one and XLA derives the gradient all-reduce from the
  shardings. Under `jax.pmap(..., axis_name=A)` each device sees its slice; pass `axis_name=A` and the
  gradients, metrics and batch statistics are averaged over the devices explicitly (`pmean`).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  augment_rng, dropout_rng = jax.random.split(step_rng)
  images = batch["image"].astype(jnp.float32)
  if config.data.augment:
    images = augmentation.augment(images, _per_example_keys(augment_rng, images.shape[0], axis_name),
                                  config.data)
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
    loss = cross_entropy(logits, batch["label"], config.label_smoothing).mean()
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
  if axis_name is not None:
    grads, batch_stats, metrics = jax.lax.pmean((grads, batch_stats, metrics), axis_name)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if config.ema_decay:
    new_state = update_ema(new_state, state.step, config.ema_decay)
  return new_state, metrics


def train_steps(state: TrainState, data: tuple[jax.Array, jax.Array], first_step: jax.Array, *,
                train_rng: jax.Array, data_rng: jax.Array, num_steps: int, steps_per_epoch: int,
                batch_size: int, config: ml_collections.FrozenConfigDict,
                batch_sharding: jax.sharding.Sharding | None = None
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
    return train_step(state, batch, train_rng, config)

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
