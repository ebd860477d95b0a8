"""Trains a run's context verifier (alexnet_jax/inference/context_verifier.py) on strings of its training
digits, and stores it in RUN/context_verifier:

  python -m experiments.train_context_verifier --workdir RUN [--count 5000] [--epochs 3] [--seed 0]

The strings are composed as `experiments.number_strings` composes its benchmark (every spacing class, half
of them on paper, 5 to 10 digits), but from the run's **training** split (its validation digits excluded,
as the run's config sets them aside) and from a stream of seeds of their own. Every candidate digit the
reader would consider is labelled whole or not by the true digits' boxes (`number_reader.whole_labels`).
The last tenth of the strings is held out and the verifier's log-loss and accuracy on it are printed. Then
`python -m experiments.number_strings --workdir RUN --fit_verifier` fits the number reader on top of it.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import context_verifier, number_reader, read_number, trained_run
from experiments import number_strings

FLAGS = flags.FLAGS
TRAINING_STREAM = 2  # training strings: default_rng([seed, index, TRAINING_STREAM])
HELD_OUT = 10  # every HELD_OUT-th string is held out to report on


def labelled_views(images: np.ndarray, labels: np.ndarray, count: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Views, digits (the class of a whole digit, -1 for a fragment or a merge) and the index of the string
  of every candidate of `count` composed strings."""
  views, digits, index_of = [], [], []
  for index in range(count):
    spacing, rendering = number_strings.kind_of(index, paper=True)
    rng = np.random.default_rng([seed, index, TRAINING_STREAM])
    image, truth, true_boxes = number_strings.make_string(images, labels, rng, spacing, rendering)
    pieces = read_number.cut_into_pieces(image)
    segments = np.array(read_number.candidate_segments(pieces), np.int64)
    boxes = np.array([read_number.union_box(pieces.boxes[a:b]) for a, b in segments])
    views.append(context_verifier.context_views(pieces, segments))
    matched = number_reader.matched_digits(boxes, true_boxes)
    digits.append(np.where(matched >= 0, np.array([int(d) for d in truth])[np.maximum(matched, 0)], -1))
    index_of.append(np.full(len(segments), index))
  return np.concatenate(views), np.concatenate(digits), np.concatenate(index_of)


def training_digits(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  config = trained_run.load_config(workdir)
  splits = input_pipeline.load_mnist(config.data, config.eval_batch_size)
  shards = [number_strings.split_arrays(shard) for shard in splits["train"]]
  images, labels = (np.concatenate(parts) for parts in zip(*shards, strict=True))
  return images, labels


def held_out_figures(params: dict, views: np.ndarray, digits: np.ndarray) -> dict[str, float]:
  """The whole-or-not log-loss and accuracy, and how often the whole digits are read right."""
  outputs = context_verifier.logits_fn(params)(views)
  whole = digits >= 0
  figures = number_reader.held_out_figures_of(1.0 / (1.0 + np.exp(-outputs[:, 0])), whole)
  return {**figures, "digits_read": float(np.mean(outputs[whole, 1:].argmax(axis=1) == digits[whole]))}


def main(argv: list[str]) -> None:
  del argv
  cli.quiet_libraries()
  start = time.perf_counter()
  views, digits, index_of = labelled_views(*training_digits(FLAGS.workdir), FLAGS.count, FLAGS.seed)
  held = index_of % HELD_OUT == HELD_OUT - 1
  print(f"{FLAGS.count} training strings: {len(digits):,} candidates, {np.mean(digits >= 0):.1%} whole "
        f"({time.perf_counter() - start:.0f} s)")
  settings = context_verifier.TrainingSettings(epochs=FLAGS.epochs, seed=FLAGS.seed)
  params = context_verifier.train(views[~held], digits[~held], settings)
  figures = held_out_figures(params, views[held], digits[held])
  path = context_verifier.save(FLAGS.workdir, params)
  print(f"held-out strings ({held.sum():,} candidates): whole or not: log-loss {figures['log_loss']:.4f}, "
        f"accuracy {figures['accuracy']:.2%}; whole digits read right {figures['digits_read']:.2%}; stored "
        f"in {path} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
  # The digit network is not read here: only the run's config (its data split) and its folder.
  flags.DEFINE_string("workdir", None, "A training run's workdir: its training digits, and where to store.")
  flags.mark_flag_as_required("workdir")
  flags.DEFINE_integer("count", 5000, "Training strings to compose.")
  flags.DEFINE_integer("epochs", 3, "Passes over their candidates.")
  flags.DEFINE_integer("seed", 0, "Seeds the strings, the initialisation and the order of the candidates.")
  app.run(main)
