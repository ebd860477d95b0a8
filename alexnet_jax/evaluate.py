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
import numpy as np
from absl import app, flags, logging

from alexnet_jax import (
    checkpointing,
    classification_metrics,
    cli,
    input_pipeline,
    metric_logging,
    report_plots,
    trained_run,
)

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_trained_run()
  flags.DEFINE_enum("split", "test", ["test", "validation"], "Which split to evaluate.")


def predict_probabilities(run: trained_run.TrainedRun, split: input_pipeline.Split, batch_size: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Softmax probabilities, labels and images of every real (unmasked) example of the split."""
  probabilities = run.probabilities_fn()
  outputs = [probabilities(batch["image"]) for batch in input_pipeline.eval_batches(split, batch_size)]
  keep = np.asarray(split.mask) > 0
  return (np.concatenate(jax.device_get(outputs))[keep], np.asarray(split.labels)[keep],
          np.asarray(split.images)[keep])


def evaluate_run(workdir: str, which: str = "best", split_name: str = "test") -> dict:
  """Writes DIR/report/ and returns its metrics."""
  run = trained_run.load(workdir, which)
  config = run.config
  splits = input_pipeline.load_mnist(config.data, config.eval_batch_size)
  if split_name not in splits:
    raise checkpointing.CheckpointError(f"split {split_name!r} is not part of this run's data")
  probabilities, labels, images = predict_probabilities(run, splits[split_name], config.eval_batch_size)
  metrics = {"workdir": run.workdir, "checkpoint_step": run.step, "split": split_name,
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
  define_flags()
  app.run(main)
