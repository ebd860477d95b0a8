"""Predict the digit in a user's own images:
`python -m alexnet_jax.predict --workdir DIR [--checkpoint best|latest|STEP] IMAGE|FOLDER ... [--json]`;
with `--number`, each image read as a string of digits (read_number.py).

Each image is brought to MNIST's own form first (digit_image.py: decoding, polarity, the 20-pixel box and
the centre of mass), then read by the run's network with its calibration temperature.

From Python, load once and call on batches of numpy images:

  predictor = predict.load_predictor("runs/default")
  probabilities = predictor([image_a, image_b])  # (2, 10); images of any size, (H, W) or (H, W, C)
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import digit_image, number_reader, read_number, trained_run
from alexnet_jax.training import checkpointing

TOP_K = 3
FLAGS = flags.FLAGS


def _padded_size(count: int, limit: int) -> int:
  """Batches are padded to a power of two (at most `limit`): a handful of compiled shapes in all."""
  return min(limit, 1 << max(0, math.ceil(math.log2(max(count, 1)))))


class Predictor:
  """A restored network: call it on images, get softmax probabilities (N, 10)."""

  def __init__(self, run: trained_run.TrainedRun, batch_size: int = 256):
    self.checkpoint_step = run.step
    self.weights = run.weights
    self.workdir = run.workdir
    self.calibrated = run.temperature is not None
    self.batch_size = batch_size
    self._probabilities = run.probabilities_fn()
    self._run = run
    self._with_features = None  # compiled on first use: most callers never ask for features

  def __call__(self, images: Sequence[np.ndarray] | np.ndarray, preprocessed: bool = False
               ) -> np.ndarray:
    """`images`: a sequence of arrays of any size (or one stacked array); `preprocessed=True` for
    images already in MNIST form (uint8 28x28, light ink on black)."""
    outputs = [np.asarray(self._probabilities(chunk))[:count]
               for chunk, count in self._chunks(images, preprocessed)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 10), np.float32)

  def probabilities_and_features(self, images: Sequence[np.ndarray] | np.ndarray, preprocessed: bool = False
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, 10), as calling the predictor gives, and the penultimate layer's activations
    (N, width) that the last layer classifies, from one forward pass (one view: no test-time
    augmentation)."""
    if self._with_features is None:
      self._with_features = self._run.probabilities_and_features_fn()
    probabilities, features = [], []
    for chunk, count in self._chunks(images, preprocessed):
      p, f = jax.device_get(self._with_features(chunk))
      probabilities.append(np.asarray(p)[:count])
      features.append(np.asarray(f)[:count])
    if not probabilities:
      return np.zeros((0, 10), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probabilities), np.concatenate(features)

  def _chunks(self, images: Sequence[np.ndarray] | np.ndarray, preprocessed: bool):
    """(padded uint8 batch, real count) pairs of at most `batch_size` images."""
    side = digit_image.MNIST_SIZE
    batch = np.stack([np.asarray(x, np.uint8).reshape(side, side, 1) if preprocessed
                      else digit_image.preprocess(x) for x in images])
    for start in range(0, len(batch), self.batch_size):
      chunk = batch[start:start + self.batch_size]
      padded = np.zeros((_padded_size(len(chunk), self.batch_size), *chunk.shape[1:]), np.uint8)
      padded[:len(chunk)] = chunk
      yield jnp.asarray(padded), len(chunk)


def load_predictor(workdir: str, checkpoint: str = "best", weights: str = "auto") -> Predictor:
  """Restores `workdir`'s checkpoint (best | latest | a step) once, with its calibration temperature."""
  run = trained_run.load(workdir, checkpoint, weights)
  return Predictor(run, batch_size=run.config.eval_batch_size)


def expand_paths(paths: Sequence[str]) -> list[str]:
  """Folders become their files (sorted); everything else is kept as given, to be reported if bad."""
  expanded = []
  for path in paths:
    if os.path.isdir(path):
      expanded += sorted(os.path.join(path, name) for name in os.listdir(path)
                         if os.path.isfile(os.path.join(path, name)))
    else:
      expanded.append(path)
  return expanded


def result_record(path: str, probabilities: np.ndarray) -> dict:
  top = np.argsort(-probabilities, kind="stable")[:TOP_K]
  return {"file": path, "prediction": int(top[0]),
          "top3": [{"digit": int(d), "probability": float(probabilities[d])} for d in top],
          "probabilities": [float(p) for p in probabilities]}


def predict_files(predictor: Predictor, paths: Sequence[str]) -> list[dict]:
  """One record per path, in order: a prediction, or {"file", "error"}; one bad file never stops the
  others."""
  images, records = {}, {}
  for path in paths:
    try:
      images[path] = digit_image.preprocess_file(path)
    except digit_image.ImageError as e:
      records[path] = {"file": path, "error": str(e)}
  probabilities = predictor(list(images.values()), preprocessed=True)
  records.update({p: result_record(p, q) for p, q in zip(images, probabilities, strict=True)})
  return [records[path] for path in paths]


def _text_line(record: dict) -> str:
  top = ", ".join(f"{t['digit']} {t['probability']:.3f}" for t in record["top3"])
  return f"{record['file']}: {record['prediction']}  (top 3: {top})"


def define_flags() -> None:
  cli.define_trained_run()
  flags.DEFINE_bool("json", False, "One JSON object per image (errors too) instead of text.")
  flags.DEFINE_bool("number", False, "Read each image as a string of digits (alexnet_jax/inference/"
                    "read_number.py): one line per image with the string, its confidence and whether it "
                    "is uncertain; with --json, the digits' probabilities and boxes too.")
  flags.DEFINE_integer("length", None, "With --number: read exactly this many digits (a field of known "
                       "length: a postcode, an ID number); an image that cannot be split into so many is an "
                       "error.", lower_bound=1)


def main(argv: list[str]) -> None:
  cli.quiet_libraries()  # the libraries' INFO lines hidden; warnings (uncalibrated probabilities) shown
  paths = expand_paths(argv[1:])
  if not paths:
    sys.exit("error: no images given: python -m alexnet_jax.predict --workdir DIR IMAGE [IMAGE ...]")
  try:
    predictor = load_predictor(FLAGS.workdir, FLAGS.checkpoint, FLAGS.weights)
  except (checkpointing.CheckpointError, input_pipeline.DatasetError) as e:
    sys.exit(f"error: {e}")
  if FLAGS.length is not None and not FLAGS.number:
    sys.exit("error: --length reads a number: give --number too")
  if FLAGS.number:
    probabilities_fn, options = number_reader.for_predictor(predictor)  # the run's verifier, if fitted
    records = read_number.read_files(probabilities_fn, paths, **options, length=FLAGS.length)
    text_line = read_number.text_line
  else:
    records, text_line = predict_files(predictor, paths), _text_line
  for record in records:
    if "error" in record:
      print(f"error: {record['error']}", file=sys.stderr, flush=True)
    if FLAGS.json:
      print(json.dumps(record), flush=True)
    elif "error" not in record:
      print(text_line(record), flush=True)
  if any("error" in record for record in records):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
