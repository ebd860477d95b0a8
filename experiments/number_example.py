"""The README's example of a handwritten number: MNIST test digits spelling TEXT, on paper.

  python -m experiments.number_example --text 90210 --out docs/images/postcode.png [--mnist_dir DIR]

Each digit of TEXT is a test image of that digit drawn from `numpy.random.default_rng([seed, 35])` (the test
split only: never a digit the network trained or was chosen on), the gaps between them 1-3 px (the `narrow`
spacing of experiments/number_strings.py) and the image rendered as a photo of paper as there (dark ink,
uneven light, noise, JPEG). The same arguments give the same pixels.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from PIL import Image

from experiments import number_strings, varied_digits

FLAGS = flags.FLAGS
STREAM = 35  # apart from every other stream of composed strings


def compose_text(images: np.ndarray, labels: np.ndarray, text: str, seed: int = 0) -> np.ndarray:
  """A uint8 greyscale photo-like image of `text` written with the given MNIST digits."""
  if not text.isdigit() or not text.isascii():
    raise ValueError(f"--text={text!r}: digits only")
  rng = np.random.default_rng([seed, STREAM])
  chosen = [rng.choice(np.flatnonzero(labels == int(c))) for c in text]
  image, _ = number_strings.compose(images[chosen], number_strings.SPACINGS["narrow"], rng)
  return number_strings.on_paper(image, rng)


def define_flags() -> None:
  flags.DEFINE_string("mnist_dir", "../shared/data/mnist", "Folder of the original MNIST .gz files.")
  flags.DEFINE_string("text", "90210", "The digits to write.")
  flags.DEFINE_integer("seed", 0, "Which test digits, and the rendering's randomness.")
  flags.DEFINE_string("out", "postcode.png", "Where the PNG goes.")


def main(argv: list[str]) -> None:
  del argv
  images, labels = varied_digits.read_mnist_test(FLAGS.mnist_dir)
  try:
    image = compose_text(images, labels, FLAGS.text, FLAGS.seed)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  Image.fromarray(image).save(FLAGS.out)
  print(f"{FLAGS.out}: {FLAGS.text}, {image.shape[1]}x{image.shape[0]} px")


if __name__ == "__main__":
  define_flags()
  app.run(main)
