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
It runs on `engine.Engine`, as the training loop does, with the config's own parallelism.
`config.steps_per_dispatch` > 1 runs that many steps per compiled `lax.scan` (`train.train_steps`), as the
loop does, to take the per-step dispatch off the host where steps are short (GPUs); its numerics can differ
from one step per dispatch in the last bits.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.data import input_pipeline
from alexnet_jax.training import engine, fingerprint, run_config
from experiments import environment

FLAGS = flags.FLAGS
TARGETS = (0.99, 0.995)


def define_flags() -> None:
  """Only when run as a program (experiment modules import one another)."""
  cli.define_config()
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


def load_splits(run: engine.Engine, data_npz: str
                ) -> tuple[input_pipeline.Split, input_pipeline.Split]:
  """(train, test) on the devices, from TFDS or from an exported .npz; the run trains on the former."""
  config = run.config
  if not data_npz:
    splits = run.load_data()
    return splits["train"][0], splits["test"]
  try:
    with np.load(data_npz) as npz:
      arrays = dict(npz)
    train_split = input_pipeline.make_split(arrays["train_images"], arrays["train_labels"], 1,
                                            run.data_sharding)
    test_split = input_pipeline.make_split(arrays["test_images"], arrays["test_labels"],
                                           config.eval_batch_size, run.data_sharding)
  except (OSError, ValueError, KeyError) as e:
    raise input_pipeline.DatasetError(f"{data_npz}: not an export of --export_npz ({e})") from None
  expected = input_pipeline.MNIST_TRAIN_SIZE - config.data.validation_size
  if train_split.num_examples != expected:
    raise input_pipeline.DatasetError(
        f"{data_npz}: holds {train_split.num_examples} training images, the config trains on "
        f"{expected} (config.data.validation_size={config.data.validation_size})")
  run.use_training_data([train_split])
  return train_split, test_split


def time_to_accuracy(config: ml_collections.ConfigDict, *, eval_every: int = 50, data_npz: str = "",
                     stop_at: float = 0.0, log=print) -> dict[str, Any]:
  """Trains the config's recipe, evaluating the test split every `eval_every` steps; returns the history
  and, for each of TARGETS, the first step and training seconds at which test accuracy reached it."""
  if eval_every < 1:
    raise run_config.ConfigError(f"eval_every={eval_every}: must be >= 1")
  if jax.process_count() > 1:
    raise run_config.ConfigError("time_to_accuracy runs in one process (any number of devices)")
  run = engine.Engine(config)
  _, test_split = load_splits(run, data_npz)
  state = run.place(run.initial_state())
  intervals = [(step, min(eval_every, run.total_steps - step))
               for step in range(0, run.total_steps, eval_every)]
  compile_s = run.compile(state, intervals)
  run.evaluate(state, test_split)  # compiles evaluation
  log(f"compiled in {compile_s:.1f} s; training {run.total_steps} steps of {config.batch_size}, "
      f"{run.steps_per_epoch} per epoch, on {jax.device_count()} x {jax.devices()[0].device_kind}, "
      f"data-parallel by {run.strategy.name}")

  history, train_s, eval_s = [], 0.0, 0.0
  for step, num_steps in intervals:
    start = time.perf_counter()
    state = jax.block_until_ready(run.advance(state, step, num_steps)[0])
    train_s += time.perf_counter() - start
    start = time.perf_counter()
    result = run.evaluate(state, test_split)
    eval_s += time.perf_counter() - start
    history.append({"step": step + num_steps, "epoch": round((step + num_steps) / run.steps_per_epoch, 4),
                    "train_s": round(train_s, 4), "test_accuracy": result["accuracy"],
                    "test_count": result["count"]})
    log(json.dumps(history[-1]))
    if stop_at and result["accuracy"] >= stop_at:
      break
  steps_trained = history[-1]["step"]
  return {"reached": first_reached(history, TARGETS), "final_test_accuracy": history[-1]["test_accuracy"],
          "steps_trained": steps_trained, "train_s": round(train_s, 4), "eval_s": round(eval_s, 4),
          "compile_s": round(compile_s, 3),
          "train_images_per_s": round(steps_trained * config.batch_size / train_s, 1),
          "eval_every": eval_every, "steps_per_dispatch": config.steps_per_dispatch,
          "parallelism": run.strategy.name, "devices": jax.device_count(),
          "params_sha256": fingerprint.params_sha256(run.logical(state).params), "history": history,
          "config": config.to_dict(), "environment": environment.describe()}


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
  except (run_config.ConfigError, input_pipeline.DatasetError) as e:
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
