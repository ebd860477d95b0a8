"""Evaluate a trained run, or an ensemble of several:

  python -m alexnet_jax.evaluate --workdir DIR [--workdir DIR2 ...] [--checkpoint best|latest|STEP]
      [--weights auto|raw|ema] [--split test|validation] [--report_dir OUT] [--tta_radius R]

Restores the chosen Orbax checkpoint of each run, predicts every example of the split (all 10,000 for
test: the last batch is padded and masked, never dropped) and writes a report: metrics.json,
confusion_matrix.png, per_class.png, reliability.png, learning_curves.png, misclassified.png,
robustness.png, confused_pairs.png and report.md, which embeds them. One run: into DIR/report/. Several:
their ensemble, the mean of their calibrated probabilities, into OUT (default: DIR/../ensemble_report/).

Probabilities are calibrated by each run's temperature (inference/calibration.py); a checkpoint without
one stored gets it fitted on its validation split here, and stored.

`--tta_radius 1` averages each run's probabilities over 9 shifted copies of every image
(inference/test_time_augmentation.py) and reports the one-view accuracy beside; the robustness curves
stay one-view (with 9 views they would cost 9 x 23 passes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging

from alexnet_jax import cli
from alexnet_jax.analysis import attributions, classification_metrics, report_plots, robustness
from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import calibrate, calibration, test_time_augmentation, trained_run
from alexnet_jax.training import checkpointing, metric_logging

FLAGS = flags.FLAGS
CONFUSED_PAIRS_SHOWN = 3
GALLERY_SIZE = 6


def define_flags() -> None:
  cli.define_trained_run(multiple=True)
  flags.DEFINE_string("report_dir", None, "Where the report goes (default: DIR/report, or for several runs "
                      "DIR/../ensemble_report).")
  flags.DEFINE_enum("split", "test", ["test", "validation"], "Which split to evaluate.")
  flags.DEFINE_integer("tta_radius", 0, "Test-time augmentation: average the probabilities of the "
                       "(2R+1)^2 copies of each image shifted by up to R pixels; 0 = one view.")
  flags.DEFINE_bool("robustness", True, "Also measure accuracy under blur, stroke thickness, rotation, "
                    "translation and noise (23 passes over the split).")


def predict_probabilities(run: trained_run.TrainedRun, split: input_pipeline.Split, batch_size: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Calibrated softmax probabilities, labels and images of every real (unmasked) example of the split."""
  logits, labels = run.split_logits(split, batch_size)
  keep = np.asarray(split.mask) > 0
  return calibration.softmax(logits, run.temperature or 1.0), labels, np.asarray(split.images)[keep]


def calibrated(run: trained_run.TrainedRun, splits: dict[str, input_pipeline.Split]
               ) -> trained_run.TrainedRun:
  """`run` with a temperature: the stored one, else one fitted now on validation (and stored)."""
  if run.temperature is not None:
    return run
  entry = calibrate.fit(run, splits, with_test=False)
  return run if entry is None else dataclasses.replace(run, temperature=entry["temperature"])


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
    galleries.append({**pair, "images": images[chosen], "saliency": attributions.saliency(
        run.logits_fn(), images[chosen].astype(np.float32), predictions[chosen])})
  return galleries


def _load_runs(workdirs: Sequence[str], which: str, weights: str, tta_radius: int = 0
               ) -> tuple[list[trained_run.TrainedRun], dict[str, input_pipeline.Split]]:
  """The runs, calibrated, and the splits of the first one's data (which all of them must share)."""
  runs = [trained_run.load(workdir, which, weights, tta_radius) for workdir in workdirs]
  data_config = runs[0].config.data
  for run in runs[1:]:
    if run.config.data.validation_size != data_config.validation_size:
      raise checkpointing.CheckpointError(
          f"{run.workdir}: validation_size {run.config.data.validation_size} differs from "
          f"{runs[0].workdir}'s {data_config.validation_size}; an ensemble needs the same splits")
  splits = input_pipeline.load_mnist(data_config, runs[0].config.eval_batch_size)
  return [calibrated(run, splits) for run in runs], splits


def _ensemble_probabilities_fn(runs: Sequence[trained_run.TrainedRun], calibrated_output: bool = True):
  functions = [run.probabilities_fn(calibrated_output) for run in runs]
  return lambda images: sum(np.asarray(f(images), np.float64) for f in functions) / len(functions)


def _single_view(runs: Sequence[trained_run.TrainedRun], split: input_pipeline.Split
                 ) -> tuple[list[trained_run.TrainedRun], float]:
  """The runs without test-time augmentation (each with its one-view temperature, where stored) and the
  accuracy of their mean probabilities on `split`."""
  single = [dataclasses.replace(run, tta_radius=0, temperature=calibration.stored_temperature(
      run.workdir, run.weights, run.step)) for run in runs]
  outputs = [run.split_logits(split, run.config.eval_batch_size) for run in single]
  probabilities = np.mean([calibration.softmax(logits, run.temperature or 1.0)
                           for run, (logits, _) in zip(single, outputs, strict=True)], axis=0)
  return single, float(np.mean(probabilities.argmax(-1) == outputs[0][1]))


def evaluate_runs(workdirs: Sequence[str], which: str = "best", split_name: str = "test", *,
                  with_robustness: bool = True, weights: str = "auto", report_dir: str | None = None,
                  tta_radius: int = 0) -> dict[str, Any]:
  """Writes the report of one run (into DIR/report/) or of the ensemble of several (mean calibrated
  probabilities, into `report_dir`) and returns its metrics; `tta_radius` > 0: each run's prediction is
  that of test-time augmentation, and "accuracy_single_view" the same runs' without it."""
  runs, splits = _load_runs(workdirs, which, weights, tta_radius)
  if split_name not in splits:
    raise checkpointing.CheckpointError(f"split {split_name!r} is not part of this run's data")
  batch_size = runs[0].config.eval_batch_size
  outputs = [run.split_logits(splits[split_name], batch_size) for run in runs]
  labels = outputs[0][1]
  images = np.asarray(splits[split_name].images)[np.asarray(splits[split_name].mask) > 0]
  probabilities = np.mean([calibration.softmax(logits, run.temperature or 1.0)
                           for run, (logits, _) in zip(runs, outputs, strict=True)], axis=0)
  uncalibrated = np.mean([calibration.softmax(logits) for logits, _ in outputs], axis=0)
  members = [{"workdir": run.workdir, "checkpoint_step": run.step, "weights": run.weights,
              "temperature": run.temperature,
              "accuracy": float(np.mean(logits.argmax(-1) == labels))}
             for run, (logits, _) in zip(runs, outputs, strict=True)]
  metrics = {"workdir": runs[0].workdir, "checkpoint_step": runs[0].step, "weights": runs[0].weights,
             "split": split_name, **classification_metrics.classification_report(probabilities, labels),
             "expected_calibration_error_uncalibrated":
                 classification_metrics.expected_calibration_error(uncalibrated, labels),
             "loss_uncalibrated": classification_metrics.log_loss(uncalibrated, labels)}
  robustness_runs = runs
  if tta_radius:
    metrics["tta_radius"] = tta_radius
    metrics["tta_views"] = len(test_time_augmentation.shifts(tta_radius))
    robustness_runs, metrics["accuracy_single_view"] = _single_view(runs, splits[split_name])
  if len(runs) > 1:
    metrics["ensemble"] = members
  else:
    metrics["temperature"] = runs[0].temperature
  # Saliency needs one network to differentiate: an ensemble's report goes without the galleries.
  galleries = (confused_pair_galleries(runs[0], metrics["most_confused"], probabilities, labels, images)
               if len(runs) == 1 else [])
  if with_robustness:
    metrics["robustness"] = robustness.curves(_ensemble_probabilities_fn(robustness_runs), images, labels,
                                              batch_size)
    metrics["robustness_units"] = robustness.UNITS
  if report_dir is None:
    report_dir = (os.path.join(workdirs[0], "report") if len(runs) == 1 else
                  os.path.join(os.path.dirname(os.path.abspath(workdirs[0])), "ensemble_report"))
  os.makedirs(report_dir, exist_ok=True)
  with open(os.path.join(report_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  records = metric_logging.read_metrics(workdirs[0]) if len(runs) == 1 else []
  report_plots.write_all(report_dir, metrics, records, probabilities=probabilities, labels=labels,
                         images=images, galleries=galleries, units=robustness.UNITS,
                         uncalibrated=uncalibrated)
  report_plots.write_markdown(report_dir, metrics)
  metrics["report_dir"] = report_dir
  return metrics


def evaluate_run(workdir: str, which: str = "best", split_name: str = "test",
                 with_robustness: bool = True, weights: str = "auto", *, tta_radius: int = 0
                 ) -> dict[str, Any]:
  """Writes DIR/report/ and returns its metrics."""
  return evaluate_runs([workdir], which, split_name, with_robustness=with_robustness, weights=weights,
                       tta_radius=tta_radius)


def main(argv: list[str]) -> None:
  del argv
  cli.quiet_libraries()
  try:
    metrics = evaluate_runs(FLAGS.workdir, FLAGS.checkpoint, FLAGS.split, with_robustness=FLAGS.robustness,
                            weights=FLAGS.weights, report_dir=FLAGS.report_dir, tta_radius=FLAGS.tta_radius)
  except (checkpointing.CheckpointError, input_pipeline.DatasetError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  what = (f"ensemble of {len(metrics['ensemble'])} runs" if "ensemble" in metrics
          else f"checkpoint step {metrics['checkpoint_step']}, {metrics['weights']} weights")
  if "tta_radius" in metrics:
    what += (f"; {metrics['tta_views']} shifted views, one view: "
             f"{metrics['accuracy_single_view']:.4f}")
  print(f"{metrics['split']} accuracy {metrics['accuracy']:.4f} over {metrics['count']} images ({what}); "
        f"calibration error {metrics['expected_calibration_error']:.4f} (uncalibrated "
        f"{metrics['expected_calibration_error_uncalibrated']:.4f}); report in {metrics['report_dir']}",
        flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
