"""Why a network answered as it did: which pixels of a digit its answer depends on.

* `saliency`, `integrated_gradients`: the gradient of a class's logit with respect to the input pixels,
  and its path integral from a black image (Sundararajan et al. 2017), which sums to the logit's change.
* `occlusion`: the drop in a class's probability when a grey-level-0 patch covers each place of the digit,
  every placement evaluated in one `jax.vmap`ped batch.

Each takes `logits(images) -> logits` (float images in [0, 255], (N, 28, 28, 1); a trained run's
`logits_fn()`), so that they apply to any network (tests use a synthetic one whose answer depends on one
pixel). The evaluation report draws saliency for its hard cases; `explain` draws all three.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model import alexnet

LogitsFn = Callable[[jax.Array], jax.Array]


def saliency(logits: LogitsFn, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """(N, 28, 28): d logit[class] / d pixel for each image."""

  def one(image, label):
    return jax.grad(lambda x: logits(x[None])[0, label])(image)[..., 0]

  return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(images, jnp.float32), jnp.asarray(classes)))


def integrated_gradients(logits: LogitsFn, images: np.ndarray, classes: np.ndarray, steps: int = 32
                         ) -> np.ndarray:
  """(N, 28, 28): (x - black) times the mean gradient along the straight path from a black image to x
  (the midpoint rule over `steps` points); sums to logit(x) - logit(black) as steps grow."""
  alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps

  def one(image, label):
    grad = jax.grad(lambda x: logits(x[None])[0, label])
    mean_gradient = jnp.mean(jax.vmap(lambda a: grad(a * image))(alphas), axis=0)
    return (image * mean_gradient)[..., 0]

  return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(images, jnp.float32), jnp.asarray(classes)))


def occlusion(logits: LogitsFn, images: np.ndarray, classes: np.ndarray, patch: int = 6) -> np.ndarray:
  """(N, 28, 28): for each pixel, the mean drop in the class's probability over the patch x patch
  placements (stride 1, fully inside the image) that cover it; 0 where covering changes nothing."""
  size = alexnet.INPUT_SHAPE[0]
  starts = jnp.arange(size - patch + 1)
  rows, cols = jnp.meshgrid(starts, starts, indexing="ij")
  grid = jnp.arange(size)

  def covered(row, col):  # (28, 28) mask of one placement
    return ((grid[:, None] >= row) & (grid[:, None] < row + patch) &
            (grid[None, :] >= col) & (grid[None, :] < col + patch)).astype(jnp.float32)

  masks = jax.vmap(covered)(rows.ravel(), cols.ravel())  # (placements, 28, 28)
  coverage = masks.sum(axis=0)

  def one(image, label):
    occluded = image[None] * (1.0 - masks[..., None])  # every placement at once
    batch = jnp.concatenate([image[None], occluded])
    probabilities = jax.nn.softmax(logits(batch))[:, label]
    drops = probabilities[0] - probabilities[1:]
    return jnp.tensordot(drops, masks, axes=1) / coverage

  # One digit at a time (lax.map), its placements in one batch: memory stays that of one batch.
  mapped = jax.jit(lambda xs, ys: jax.lax.map(lambda pair: one(*pair), (xs, ys)))
  return np.asarray(mapped(jnp.asarray(images, jnp.float32), jnp.asarray(classes)))
