"""Test-time augmentation: one prediction from several shifted copies of each image.

MNIST centres each digit by its centre of mass, rounded to a pixel, and the network has learned digits at
that position give or take the training shifts; a digit that sits a pixel off, or that reads better a
pixel off, is read again from its neighbours' point of view. With radius R the network sees the
(2R + 1)^2 copies of each image shifted by -R..R pixels down and right (zero-filled: the background is
black) and the prediction is the mean of their probabilities. Measured on validation over seven trained
runs (docs/results/recipe.md): R = 1 (9 views) never lowered a run's accuracy and raised it by 0.05 points on
average, at 9 times the evaluation cost.

Its output is a log-probability: log(mean over views of softmax(logits)). Softmax of it gives back the
averaged probabilities, so the rest of the code treats it as logits; a temperature fitted on it calibrates
the averaged prediction (alexnet_jax/inference/calibration.py keys that temperature by the radius).

Only `evaluate --tta_radius R` uses it. Training's logged figures, `predict`, `serve` and `export` read one
view: a chosen recipe must stand without it, and TTA is reported beside the single view, never instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


def shifts(radius: int) -> list[tuple[int, int]]:
  """(down, right) pixel offsets of every view, the unshifted one first."""
  if radius < 0:
    raise ValueError(f"tta radius must be >= 0, got {radius}")
  grid = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
  return [(0, 0)] + [offset for offset in grid if offset != (0, 0)]


def shift(images: jax.Array, down: int, right: int) -> jax.Array:
  """(N, H, W, C) images moved `down` rows and `right` columns (negative: up, left), black filling in.

  Integer shifts are exact: every pixel keeps its value, none is interpolated.
  """
  if down == right == 0:
    return images
  pad = max(abs(down), abs(right))
  height, width = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return padded[:, pad - down:pad - down + height, pad - right:pad - right + width]


def averaged_log_probabilities_fn(logits_fn: Callable[[jax.Array], jax.Array], radius: int
                                  ) -> Callable[[jax.Array], jax.Array]:
  """images -> log(mean over the views' softmax(logits_fn(view))); `logits_fn` itself when radius is 0."""
  offsets = shifts(radius)
  if radius == 0:
    return logits_fn

  def averaged(images: jax.Array) -> jax.Array:
    # logsumexp of the log-softmaxes: no probability underflows to 0 and then to log 0 = -inf.
    views = jnp.stack([jax.nn.log_softmax(logits_fn(shift(images, *offset))) for offset in offsets])
    return jax.nn.logsumexp(views, axis=0) - math.log(len(offsets))

  return averaged
