"""See inside a trained network: what it learned and why it answered as it did.

  python -m alexnet_jax.explain --workdir DIR [--checkpoint best|latest|STEP] [IMAGE ...] [--out DIR]

The functions here return arrays; `explain_plots.py` draws them. Images are MNIST-form uint8 (or float in
[0, 255]) of shape (N, 28, 28, 1): a user's own files go through `digit_image.preprocess` first; by default a
fixed, seeded set of test digits, misclassified ones included.

* `conv1_filters`: the first layer's learned filters (one input channel: they display directly).
* `feature_maps`: every convolution's output (after its activation) and every pooling stage's, read with
  Flax's own `sow` (`mutable=["intermediates"]`), which costs nothing when not asked for.
* why it answered: saliency, integrated gradients and occlusion (attributions.py).
* `penultimate_features` and `pca_2d`: the classifier's input features of many digits, and their two
  principal components.

"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.analysis import attributions
from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import digit_image, predict, trained_run
from alexnet_jax.training import checkpointing

FLAGS = flags.FLAGS
DEFAULT_DIGITS = 12  # shown by default: this many test digits, a third of them misclassified if any


def _intermediates(run: trained_run.TrainedRun, variables, images: jax.Array) -> dict[str, tuple]:
  """What the model `sow`s (stage activations, penultimate features) for a batch of images."""
  _, state = run.model.apply(variables, input_pipeline.normalize(images), train=False,
                             mutable=["intermediates"])
  return state["intermediates"]


def conv1_filters(run: trained_run.TrainedRun) -> np.ndarray:
  """(filters, height, width): conv1's kernels, one input channel each."""
  kernel = np.asarray(run.variables["params"]["conv1"]["kernel"])  # HWIO with I = 1
  return np.transpose(kernel[:, :, 0, :], (2, 0, 1))


def feature_maps(run: trained_run.TrainedRun, image: np.ndarray) -> dict[str, np.ndarray]:
  """Stage name -> (H, W, C) activations for one image, in the network's order (conv1_activation,
  pool1, conv2_activation, ...)."""
  stages = _intermediates(run, run.variables, jnp.asarray(image, jnp.float32)[None])
  return {name: np.asarray(values[0][0]) for name, values in stages.items() if name != "features"}


def most_active_channels(maps: np.ndarray, count: int) -> np.ndarray:
  """Indices of the `count` channels of (H, W, C) maps with the largest mean activation."""
  return np.argsort(-maps.mean(axis=(0, 1)), kind="stable")[:count]


def penultimate_features(run: trained_run.TrainedRun, images: np.ndarray, batch_size: int = 1000
                         ) -> np.ndarray:
  """(N, width): the activations the last layer classifies (after fc2)."""

  @jax.jit
  def features(variables, batch):
    return _intermediates(run, variables, batch)["features"][0]

  return np.concatenate([np.asarray(features(run.variables, jnp.asarray(images[i:i + batch_size])))
                         for i in range(0, len(images), batch_size)])


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(N, 2) coordinates on the two principal components, and the fraction of variance each explains."""
  centred = features - features.mean(axis=0)
  _, singular, vt = np.linalg.svd(centred, full_matrices=False)
  explained = singular**2 / np.sum(singular**2)
  return centred @ vt[:2].T, explained[:2]


def default_digits(probabilities: np.ndarray, labels: np.ndarray, count: int = DEFAULT_DIGITS,
                   seed: int = 0) -> np.ndarray:
  """Indices of a fixed, seeded choice of test digits: up to a third misclassified, the rest right."""
  rng = np.random.default_rng(seed)
  wrong = np.flatnonzero(probabilities.argmax(-1) != labels)
  right = np.flatnonzero(probabilities.argmax(-1) == labels)
  chosen_wrong = rng.choice(wrong, size=min(len(wrong), count // 3), replace=False)
  chosen_right = rng.choice(right, size=count - len(chosen_wrong), replace=False)
  return np.sort(np.concatenate([chosen_wrong, chosen_right]))


# --- Command line -------------------------------------------------------------------------------------


def explain_run(workdir: str, which: str, paths: list[str], out: str, weights: str = "auto"
                ) -> dict[str, object]:
  """Writes the pictures and explain.md to `out`; returns what they show, as arrays and numbers."""
  from alexnet_jax.analysis import evaluate, explain_plots  # noqa: PLC0415 - matplotlib only when drawing

  run = trained_run.load(workdir, which, weights)
  if paths:  # A user's own images: through predict's preprocessing, each error named.
    names = predict.expand_paths(paths)
    images = np.stack([digit_image.preprocess_file(p) for p in names])
    labels = None
  else:
    splits = input_pipeline.load_mnist(run.config.data, run.config.eval_batch_size)
    test_probabilities, test_labels, test_images = evaluate.predict_probabilities(
        run, splits["test"], run.config.eval_batch_size)
    chosen = default_digits(test_probabilities, test_labels)
    images, labels = test_images[chosen], test_labels[chosen]
    names = [f"test #{i}" for i in chosen]
  logits = run.logits_fn()
  probabilities = np.asarray(jax.nn.softmax(jax.jit(logits)(jnp.asarray(images, jnp.float32))))
  predicted = probabilities.argmax(-1)
  result = {"names": names, "images": images, "labels": labels, "predicted": predicted,
            "probabilities": probabilities, "filters": conv1_filters(run),
            "feature_maps": feature_maps(run, images[0]),
            "saliency": attributions.saliency(logits, images, predicted),
            "integrated_gradients": attributions.integrated_gradients(logits, images, predicted),
            "occlusion": attributions.occlusion(logits, images, labels if labels is not None else predicted)}
  if labels is not None:
    features = penultimate_features(run, test_images)
    result["pca"], result["pca_explained"] = pca_2d(features)
    result["pca_labels"], result["pca_wrong"] = test_labels, test_probabilities.argmax(-1) != test_labels
  os.makedirs(out, exist_ok=True)
  explain_plots.write_all(out, result)
  return result


def define_flags() -> None:
  cli.define_trained_run()
  flags.DEFINE_string("out", "", "Where the pictures go (default: WORKDIR/explain).")


def main(argv: list[str]) -> None:
  cli.quiet_libraries()
  try:
    out = FLAGS.out or os.path.join(FLAGS.workdir, "explain")
    result = explain_run(FLAGS.workdir, FLAGS.checkpoint, argv[1:], out, FLAGS.weights)
  except (checkpointing.CheckpointError, digit_image.ImageError, input_pipeline.DatasetError) as e:
    sys.exit(f"error: {e}")
  print(f"explained {len(result['names'])} digits; pictures and explain.md in {out}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
