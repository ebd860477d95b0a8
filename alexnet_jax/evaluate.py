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
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from alexnet_jax import (
    checkpointing,
    classification_metrics,
    cli,
    explain,
    input_pipeline,
    metric_logging,
    report_plots,
    robustness,
    trained_run,
)

FLAGS = flags.FLAGS
CONFUSED_PAIRS_SHOWN = 3
GALLERY_SIZE = 6


def define_flags() -> None:
  cli.define_trained_run()
  flags.DEFINE_enum("split", "test", ["test", "validation"], "Which split to evaluate.")
  flags.DEFINE_bool("robustness", True, "Also measure accuracy under blur, stroke thickness, rotation, "
                    "translation and noise (23 passes over the split).")


def predict_probabilities(run: trained_run.TrainedRun, split: input_pipeline.Split, batch_size: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Softmax probabilities, labels and images of every real (unmasked) example of the split."""
  probabilities = run.probabilities_fn()
  outputs = [probabilities(batch["image"]) for batch in input_pipeline.eval_batches(split, batch_size)]
  keep = np.asarray(split.mask) > 0
  return (np.concatenate(jax.device_get(outputs))[keep], np.asarray(split.labels)[keep],
          np.asarray(split.images)[keep])


def confused_pair_galleries(run: trained_run.TrainedRun, most_confused: list[dict[str, int]],
                            probabilities: np.ndarray, labels: np.ndarray, images: np.ndarray
                            ) -> list[dict[str, Any]]:
  """For each of the most confused pairs, its digits (up to GALLERY_SIZE, most confident first) and the
  saliency of the class the network answered."""
  predictions = probabilities.argmax(-1)
  galleries = []
  for pair in most_confused[:CONFUSED_PAIRS_SHOWN]:
    chosen = np.flatnonzero((labels == pair["true"]) & (predictions == pair["predicted"]))
    chosen = chosen[np.argsort(-probabilities[chosen, pair["predicted"]], kind="stable")][:GALLERY_SIZE]
    galleries.append({**pair, "images": images[chosen], "saliency": explain.saliency(
        explain.logits_fn(run), images[chosen].astype(np.float32), predictions[chosen])})
  return galleries


def evaluate_run(workdir: str, which: str = "best", split_name: str = "test",
                 with_robustness: bool = True) -> dict:
  """Writes DIR/report/ and returns its metrics."""
  run = trained_run.load(workdir, which)
  config = run.config
  splits = input_pipeline.load_mnist(config.data, config.eval_batch_size)
  if split_name not in splits:
    raise checkpointing.CheckpointError(f"split {split_name!r} is not part of this run's data")
  probabilities, labels, images = predict_probabilities(run, splits[split_name], config.eval_batch_size)
  metrics = {"workdir": run.workdir, "checkpoint_step": run.step, "split": split_name,
             **classification_metrics.classification_report(probabilities, labels)}
  galleries = confused_pair_galleries(run, metrics["most_confused"], probabilities, labels, images)
  if with_robustness:
    metrics["robustness"] = robustness.curves(run.probabilities_fn(), images, labels,
                                              config.eval_batch_size)
    metrics["robustness_units"] = robustness.UNITS
  report_dir = os.path.join(workdir, "report")
  os.makedirs(report_dir, exist_ok=True)
  with open(os.path.join(report_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  report_plots.write_all(report_dir, metrics, metric_logging.read_metrics(workdir),
                         probabilities=probabilities, labels=labels, images=images, galleries=galleries,
                         units=robustness.UNITS)
  report_plots.write_markdown(report_dir, metrics)
  return metrics


def main(argv: list[str]) -> None:
  del argv
  try:
    metrics = evaluate_run(FLAGS.workdir, FLAGS.checkpoint, FLAGS.split, FLAGS.robustness)
  except (checkpointing.CheckpointError, input_pipeline.DatasetError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  print(f"{metrics['split']} accuracy {metrics['accuracy']:.4f} over {metrics['count']} images "
        f"(checkpoint step {metrics['checkpoint_step']}); report in "
        f"{os.path.join(FLAGS.workdir, 'report')}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
