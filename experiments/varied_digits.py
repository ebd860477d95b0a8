"""Check `alexnet_jax.predict` on MNIST test digits saved as the images a user might hand it.

`python -m experiments.varied_digits --workdir runs/default --out /tmp/varied [--count 1000]`

Writes `count` MNIST test digits (the first ones of the test split, read from the original LeCun file) as
PNG files, each in one of several forms: inverted (dark ink on white), enlarged to 128x128, RGB (tinted),
shifted off-centre on a larger canvas, and all of these at once. Then runs the same preprocessing and
network the `predict` command uses and prints the accuracy, per form and overall.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
from absl import app, flags
from PIL import Image

from alexnet_jax import cli
from alexnet_jax.inference import predict

FORMS = ("inverted", "enlarged_128", "rgb", "off_centre", "all_four")

FLAGS = flags.FLAGS


def read_mnist_test(mnist_dir: str) -> tuple[np.ndarray, np.ndarray]:
  with gzip.open(os.path.join(mnist_dir, "t10k-images-idx3-ubyte.gz")) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  with gzip.open(os.path.join(mnist_dir, "t10k-labels-idx1-ubyte.gz")) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  return images, labels


def inverted(digit: np.ndarray) -> np.ndarray:
  return 255 - digit


def enlarged(digit: np.ndarray, size: int = 128) -> np.ndarray:
  return np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC))


def rgb(digit: np.ndarray, tint: tuple[float, float, float] = (1.0, 0.8, 0.5)) -> np.ndarray:
  return np.round(digit[..., None] * np.array(tint)).astype(np.uint8)


def off_centre(digit: np.ndarray, rng: np.random.Generator, canvas: int = 64) -> np.ndarray:
  """The digit pasted at a random place of a larger canvas of the same background."""
  field = np.full((canvas, canvas, *digit.shape[2:]), digit[0, 0], np.uint8)
  top, left = rng.integers(0, canvas - digit.shape[0] + 1, size=2)
  field[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
  return field


def varied(digit: np.ndarray, form: str, rng: np.random.Generator) -> np.ndarray:
  if form == "inverted":
    return inverted(digit)
  if form == "enlarged_128":
    return enlarged(digit)
  if form == "rgb":
    return rgb(digit)
  if form == "off_centre":
    return off_centre(digit, rng)
  return off_centre(rgb(inverted(enlarged(digit))), rng, canvas=200)


def write_images(out: str, count: int, mnist_dir: str) -> list[tuple[str, int, str]]:
  """(path, label, form) for each file written."""
  images, labels = read_mnist_test(mnist_dir)
  rng = np.random.default_rng(0)
  os.makedirs(out, exist_ok=True)
  written = []
  for i in range(count):
    form = FORMS[i % len(FORMS)]
    path = os.path.join(out, f"{i:05d}_{form}_label{labels[i]}.png")
    Image.fromarray(varied(images[i], form, rng)).save(path)
    written.append((path, int(labels[i]), form))
  return written


def define_flags() -> None:
  cli.define_trained_run()
  flags.DEFINE_string("out", "/tmp/varied_digits", "Folder for the PNG files.")
  flags.DEFINE_string("mnist_dir", "../shared/data/mnist", "Folder with t10k-*-ubyte.gz.")
  flags.DEFINE_integer("count", 1000, "How many test digits.")


def main(argv: list[str]) -> None:
  del argv
  written = write_images(FLAGS.out, FLAGS.count, FLAGS.mnist_dir)
  predictor = predict.load_predictor(FLAGS.workdir, FLAGS.checkpoint, FLAGS.weights)
  records = predict.predict_files(predictor, [path for path, _, _ in written])
  errors = [r for r in records if "error" in r]
  predicted = {r["file"]: r["prediction"] for r in records if "error" not in r}
  correct = {form: [] for form in FORMS}
  for path, label, form in written:
    correct[form].append(predicted.get(path) == label)
  for form, hits in correct.items():
    print(f"{form:>13}: {np.mean(hits):.2%} of {len(hits)}")
  everything = [hit for hits in correct.values() for hit in hits]
  images, labels = read_mnist_test(FLAGS.mnist_dir)
  as_is = predictor(images[:FLAGS.count, ..., None], preprocessed=True).argmax(-1) == labels[:FLAGS.count]
  print(f"{'MNIST as is':>13}: {np.mean(as_is):.2%} of {FLAGS.count} (the same digits, no preprocessing)")
  print(f"{'overall':>13}: {np.mean(everything):.2%} of {len(everything)} ({len(errors)} unreadable) "
        f"- checkpoint step {predictor.checkpoint_step}, images in {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
