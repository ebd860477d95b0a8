"""Evaluate a trained run: `python -m alexnet_jax.evaluate --workdir DIR [--checkpoint best|latest|STEP]
[--split test|validation]`.

Restores the chosen Orbax checkpoint, predicts every example of the split (all 10,000 for test: the last
batch is padded and masked, never dropped) and writes `DIR/report/`: metrics.json, confusion_matrix.png,
per_class.png, learning_curves.png, misclassified.png and report.md, which embeds them.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from alexnet_jax import (
    checkpointing,
    classification_metrics,
    input_pipeline,
    metric_logging,
    models,
    optimizers,
    report_plots,
    train,
)

FLAGS = flags.FLAGS


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise checkpointing.CheckpointError(f"{path} not found: is {workdir} a training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_state(config: ml_collections.ConfigDict, workdir: str, which: str
                  ) -> tuple[train.TrainState, int]:
  """The TrainState saved at `which` (best | latest | a step) in `workdir`."""
  model = models.create_model(config.model)
  template = train.create_train_state(model, optimizers.create_optimizer(config, 1), jax.random.key(0))
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    step = checkpointing.resolve_step(checkpointer, which)
    return checkpointer.restore(step, template), step
  finally:
    checkpointer.close()


def probability_fn(state: train.TrainState):
  """A jitted function: uint8 images (N, 28, 28, 1) -> softmax probabilities (N, classes)."""

  @jax.jit
  def probabilities(variables, images):
    logits = state.apply_fn(variables, input_pipeline.normalize(images), train=False)
    return jax.nn.softmax(logits)

  # The weights go in as arguments: closed over, they would be compiled into the program as constants.
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return lambda images: probabilities(variables, images)


def predict_probabilities(state: train.TrainState, split: input_pipeline.Split, batch_size: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Softmax probabilities, labels and images of every real (unmasked) example of the split."""
  probabilities = probability_fn(state)
  outputs = [probabilities(batch["image"]) for batch in input_pipeline.eval_batches(split, batch_size)]
  keep = np.asarray(split.mask) > 0
  return (np.concatenate(jax.device_get(outputs))[keep], np.asarray(split.labels)[keep],
          np.asarray(split.images)[keep])


def evaluate_run(workdir: str, which: str = "best", split_name: str = "test") -> dict:
  """Writes DIR/report/ and returns its metrics."""
  config = load_run_config(workdir)
  state, step = restore_state(config, workdir, which)
  splits = input_pipeline.load_mnist(config.data, config.eval_batch_size)
  if split_name not in splits:
    raise checkpointing.CheckpointError(f"split {split_name!r} is not part of this run's data")
  probabilities, labels, images = predict_probabilities(state, splits[split_name],
                                                        config.eval_batch_size)
  metrics = {"workdir": os.path.abspath(workdir), "checkpoint_step": step, "split": split_name,
             **classification_metrics.classification_report(probabilities, labels)}
  report_dir = os.path.join(workdir, "report")
  os.makedirs(report_dir, exist_ok=True)
  with open(os.path.join(report_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  report_plots.write_all(report_dir, metrics, metric_logging.read_metrics(workdir),
                         probabilities=probabilities, labels=labels, images=images)
  report_plots.write_markdown(report_dir, metrics)
  return metrics




def main(argv: list[str]) -> None:
  del argv
  try:
    metrics = evaluate_run(FLAGS.workdir, FLAGS.checkpoint, FLAGS.split)
  except (checkpointing.CheckpointError, input_pipeline.DatasetError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  print(f"{metrics['split']} accuracy {metrics['accuracy']:.4f} over {metrics['count']} images "
        f"(checkpoint step {metrics['checkpoint_step']}); report in "
        f"{os.path.join(FLAGS.workdir, 'report')}", flush=True)


if __name__ == "__main__":
  # Flags are defined only when run as a program, so that modules can import one another.
  flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_string("checkpoint", "best", "best | latest | a saved step.")
  flags.DEFINE_enum("split", "test", ["test", "validation"], "Which split to evaluate.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
