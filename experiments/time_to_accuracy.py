"""Time to a test accuracy: how long the training recipe of a config takes to first reach 99% and 99.5% on
MNIST's 10,000 test images, on whatever devices JAX runs on.

  python -m experiments.time_to_accuracy --config configs/default.py [--eval_every 50] \\
      [--json_out F] [--config.steps_per_dispatch=25] [--config.FIELD=VALUE ...]
  python -m experiments.time_to_accuracy --export_npz mnist.npz   # TFDS's splits, for a host without TF
  python -m experiments.time_to_accuracy --data_npz mnist.npz ...  # ... and training from them there

The run follows the training loop's own trajectory: the same initial state, per-epoch example order and
`train.train_step` with `fold_in(train_rng, step)`; with one step per dispatch its parameters are the loop's
bit for bit (tests/test_time_to_accuracy.py). It leaves out what does not train (checkpoints, validation,
metric files) and evaluates the whole test split every `eval_every` steps, since that is the question asked.

Timing: `train_s` is wall time spent training, measured between evaluations (each interval ends by waiting
for the device), so dispatch and any host stalls count; evaluation time is reported apart. Compilation
happens ahead of the clock (ahead-of-time `lower().compile()`) and is reported as `compile_s`.
`config.steps_per_dispatch` > 1 runs that many steps per compiled `lax.scan` (`train.train_steps`), as the
loop does, to take the per-step dispatch off the host where steps are short (GPUs); its numerics can differ
from one step per dispatch in the last bits.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from alexnet_jax import config_checks, fingerprint, input_pipeline, models, optimizers, parallel, train
from experiments import environment

FLAGS = flags.FLAGS
TARGETS = (0.99, 0.995)


def define_flags() -> None:
  """Only when run as a program (experiment modules import one another)."""
  config_flags.DEFINE_config_file("config", "configs/default.py", "A run config.")
  flags.DEFINE_integer("eval_every", 50, "Evaluate the test split every this many steps.")
  flags.DEFINE_float("stop_at", 0.0, "Stop once test accuracy reaches this (0: train the whole recipe).")
  flags.DEFINE_string("data_npz", "", "Read the splits from this file (written by --export_npz).")
  flags.DEFINE_string("export_npz", "", "Write TFDS's train and test splits of the config to this file, "
                      "then exit.")
  flags.DEFINE_string("json_out", "", "Also write the result to this JSON file.")


def export_npz(config: ml_collections.ConfigDict, path: str) -> None:
  """TFDS's training and test splits, exactly as the training loop reads them, as one .npz file."""
  splits = input_pipeline.load_mnist(config.data, config.eval_batch_size)
  train_split, test_split = splits["train"][0], splits["test"]
  real = np.asarray(test_split.mask) > 0
  np.savez_compressed(path, train_images=np.asarray(train_split.images),
                      train_labels=np.asarray(train_split.labels),
                      test_images=np.asarray(test_split.images)[real],
                      test_labels=np.asarray(test_split.labels)[real])


def load_splits(config: ml_collections.ConfigDict, data_npz: str, sharding: jax.sharding.Sharding
                ) -> tuple[input_pipeline.Split, input_pipeline.Split]:
  """(train, test) on the devices, from TFDS or from an exported .npz; test padded to whole batches."""
  if not data_npz:
    splits = input_pipeline.load_mnist(config.data, config.eval_batch_size, sharding)
    return splits["train"][0], splits["test"]
  try:
    with np.load(data_npz) as npz:
      arrays = dict(npz)
    train_split = input_pipeline.make_split(arrays["train_images"], arrays["train_labels"], 1, sharding)
    test_split = input_pipeline.make_split(arrays["test_images"], arrays["test_labels"],
                                           config.eval_batch_size, sharding)
  except (OSError, ValueError, KeyError) as e:
    raise input_pipeline.DatasetError(f"{data_npz}: not an export of --export_npz ({e})") from None
  expected = input_pipeline.MNIST_TRAIN_SIZE - config.data.validation_size
  if train_split.num_examples != expected:
    raise input_pipeline.DatasetError(
        f"{data_npz}: holds {train_split.num_examples} training images, the config trains on "
        f"{expected} (config.data.validation_size={config.data.validation_size})")
  return train_split, test_split


class _Trainer:
  """Advances the state by a number of steps as the training loop does: one dispatch per step, or
  `config.steps_per_dispatch` steps per `train.train_steps` call. Everything is compiled up front."""

  def __init__(self, config, state, train_split, *, strategy, rngs, eval_every):
    self.data_rng, self.train_rng = rngs
    self.steps_per_epoch, total_steps = train.step_counts(config)
    self.steps_per_dispatch = config.steps_per_dispatch
    self.batch_size, self.strategy, self.eval_every = config.batch_size, strategy, eval_every
    self.data = (train_split.images, train_split.labels)
    options = train.StepOptions.from_config(config)
    start = time.perf_counter()
    if self.steps_per_dispatch == 1:
      self.take_fn = jax.jit(input_pipeline.take_batch, static_argnames="batch_size")
      self.permutation_fn = jax.jit(input_pipeline.epoch_permutation, static_argnums=2)
      batch = self.take_fn(*self.data, self.permutation_fn(self.data_rng, 0, self.num_examples), 0,
                           batch_size=self.batch_size)
      step_fn = strategy.compile_train(functools.partial(train.train_step, options=options))
      self.step_fn = step_fn.lower(state, strategy.shard_batch(batch), self.train_rng).compile()
    else:
      multi_step_fn = jax.jit(functools.partial(
          train.train_steps, steps_per_epoch=self.steps_per_epoch, batch_size=self.batch_size,
          options=options, batch_sharding=strategy.batch_sharding),
          static_argnames="num_steps", donate_argnums=0)
      self.multi_step_fns = {
          length: multi_step_fn.lower(state, self.data, rngs, 0, num_steps=length).compile()
          for length in {length for _, length in self._dispatches(0, total_steps)}}
    self.compile_s = time.perf_counter() - start
    self._permutation, self._epoch = None, None

  @property
  def num_examples(self) -> int:
    return self.data[0].shape[0]

  def _dispatches(self, first_step: int, end_step: int):
    """(step, length) of each multi-step dispatch from first_step to end_step, the loop's way."""
    step = first_step
    while step < end_step:
      length = train.dispatch_length(step, end_step, self.steps_per_dispatch, self.steps_per_epoch,
                                     (self.eval_every,))
      yield step, length
      step += length

  def run(self, state: train.TrainState, first_step: int, num_steps: int) -> train.TrainState:
    """Dispatches `num_steps` steps from `first_step` (an evaluation interval); returns without waiting."""
    if self.steps_per_dispatch > 1:
      for step, length in self._dispatches(first_step, first_step + num_steps):
        state, _ = self.multi_step_fns[length](state, self.data, (self.data_rng, self.train_rng), step)
      return state
    for step in range(first_step, first_step + num_steps):
      epoch, index = divmod(step, self.steps_per_epoch)
      if epoch != self._epoch:
        self._permutation = self.permutation_fn(self.data_rng, epoch, self.num_examples)
        self._epoch = epoch
      batch = self.take_fn(*self.data, self._permutation, index, batch_size=self.batch_size)
      state, _ = self.step_fn(state, self.strategy.shard_batch(batch), self.train_rng)
    return state


def time_to_accuracy(config: ml_collections.ConfigDict, *, eval_every: int = 50, data_npz: str = "",
                     stop_at: float = 0.0, log=print) -> dict[str, Any]:
  """Trains the config's recipe, evaluating the test split every `eval_every` steps; returns the history
  and, for each of TARGETS, the first step and training seconds at which test accuracy reached it."""
  config_checks.validate_config(config, num_devices=jax.device_count(), num_processes=1)
  if eval_every < 1:
    raise config_checks.ConfigError(f"eval_every={eval_every}: must be >= 1")
  steps_per_epoch, total_steps = train.step_counts(config)
  mesh = parallel.create_mesh()
  strategy = parallel.create_strategy("jit", mesh)
  train_split, test_split = load_splits(config, data_npz, parallel.replicated(mesh))
  init_rng, train_rng, data_rng = train.rng_streams(config.seed)
  model = models.create_model(config.model)
  optimizer = optimizers.create_optimizer(config, total_steps)
  state = jax.jit(functools.partial(train.create_train_state, model, optimizer),
                  out_shardings=strategy.replicated)(init_rng)
  trainer = _Trainer(config, state, train_split, strategy=strategy, rngs=(data_rng, train_rng),
                     eval_every=eval_every)
  eval_fn = strategy.compile_eval(train.eval_step)
  train.evaluate_split(eval_fn, state, test_split, config.eval_batch_size)  # compiles evaluation
  log(f"compiled in {trainer.compile_s:.1f} s; training {total_steps} steps of {config.batch_size}, "
      f"{steps_per_epoch} per epoch, on {jax.device_count()} x {jax.devices()[0].device_kind}")

  history, train_s, eval_s, step = [], 0.0, 0.0, 0
  while step < total_steps:
    num_steps = min(eval_every, total_steps - step)
    start = time.perf_counter()
    state = jax.block_until_ready(trainer.run(state, step, num_steps))
    train_s += time.perf_counter() - start
    step += num_steps
    start = time.perf_counter()
    result = train.evaluate_split(eval_fn, state, test_split, config.eval_batch_size)
    eval_s += time.perf_counter() - start
    history.append({"step": step, "epoch": round(step / steps_per_epoch, 4), "train_s": round(train_s, 4),
                    "test_accuracy": result["accuracy"], "test_count": result["count"]})
    log(json.dumps(history[-1]))
    if stop_at and result["accuracy"] >= stop_at:
      break
  return {"reached": first_reached(history, TARGETS), "final_test_accuracy": history[-1]["test_accuracy"],
          "steps_trained": step, "train_s": round(train_s, 4), "eval_s": round(eval_s, 4),
          "compile_s": round(trainer.compile_s, 3),
          "train_images_per_s": round(step * config.batch_size / train_s, 1),
          "eval_every": eval_every, "steps_per_dispatch": config.steps_per_dispatch,
          "params_sha256": fingerprint.params_sha256(state.params), "history": history,
          "config": config.to_dict(), "environment": environment.fingerprint()}


def first_reached(history: list[dict[str, Any]], targets: tuple[float, ...]
                  ) -> dict[str, dict[str, Any] | None]:
  """For each target, the step, epoch and training seconds of the first evaluation at or above it."""
  return {f"{target:g}": next(({k: r[k] for k in ("step", "epoch", "train_s")} for r in history
                               if r["test_accuracy"] >= target), None) for target in targets}


def summary_line(result: dict[str, Any]) -> str:
  parts = []
  for target, hit in result["reached"].items():
    parts.append(f"{float(target):.1%}: " + (f"{hit['train_s']:.2f} s (step {hit['step']}, epoch "
                                              f"{hit['epoch']:.2f})" if hit else "not reached"))
  return (f"time to test accuracy  {'  '.join(parts)};  final {result['final_test_accuracy']:.2%} after "
          f"{result['steps_trained']} steps, {result['train_s']:.2f} s training "
          f"({result['train_images_per_s']:,.0f} img/s), {result['compile_s']:.1f} s compile, "
          f"{result['eval_s']:.2f} s evaluating")


def main(argv: list[str]) -> None:
  del argv
  try:
    if FLAGS.export_npz:
      export_npz(FLAGS.config, FLAGS.export_npz)
      print(f"wrote {FLAGS.export_npz}")
      sys.exit(0)
    result = time_to_accuracy(FLAGS.config, eval_every=FLAGS.eval_every, data_npz=FLAGS.data_npz,
                              stop_at=FLAGS.stop_at)
  except (config_checks.ConfigError, input_pipeline.DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(summary_line(result), flush=True)
  if FLAGS.json_out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json_out)), exist_ok=True)
    with open(FLAGS.json_out, "w") as f:
      json.dump(result, f, indent=2)
  sys.exit(0)


if __name__ == "__main__":
  define_flags()
  app.run(main)
