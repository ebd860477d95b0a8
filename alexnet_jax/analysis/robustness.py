"""Where does the network break? Test accuracy on the whole test set under increasingly strong damage.

Each perturbation maps float images (N, 28, 28, 1) in [0, 255] to damaged ones; at strength 0 every one
is the identity (the images are passed through untouched), so each curve starts exactly at the plain
test accuracy. Blur, stroke thickness, rotation, translation and noise are the ways handwriting and
scanning differ from MNIST's own: blurred or badly written strokes, slanted, off-centre or dirty digits.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import augmentation, input_pipeline

# Strengths per perturbation, 0 included; units in `UNITS`.
STRENGTHS: dict[str, tuple[float, ...]] = {
    "blur": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5),
    "thickness": (-2, -1, 0, 1, 2),
    "rotation": (-45, -30, -15, 0, 15, 30, 45),
    "translation": (-6, -3, 0, 3, 6),
    "noise": (0, 32, 64, 96, 128),
}
UNITS = {"blur": "Gaussian sigma, px", "thickness": "px of erosion (-) or dilation (+)",
         "rotation": "degrees", "translation": "px to the right and down",
         "noise": "std of added noise, of 255"}
NOISE_SEED = 0


def _blur(images: jax.Array, sigma: float) -> jax.Array:
  # Truncated at ceil(3 sigma), black (0) beyond the border, as around any MNIST digit.
  radius = int(np.ceil(3 * sigma))
  return jax.vmap(lambda image: augmentation.gaussian_blur(image, sigma, radius))(images)


def _thickness(images: jax.Array, pixels: int) -> jax.Array:
  """Grey dilation (pixels > 0) or erosion (< 0) by a 3x3 square, |pixels| times."""
  one_step = jax.vmap(lambda image: augmentation.stroke_width(image, float(np.sign(pixels))))
  for _ in range(abs(int(pixels))):
    images = one_step(images)
  return images


def _affine(images: jax.Array, degrees: float = 0.0, shift: float = 0.0) -> jax.Array:
  """Rotation about the centre and a shift right and down, bilinear, black outside."""
  size = images.shape[1]
  centre = (size - 1) / 2.0
  rows, cols = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                            indexing="ij")
  angle = np.deg2rad(degrees)
  out_rows, out_cols = rows - centre - shift, cols - centre - shift
  src_rows = np.cos(angle) * out_rows + np.sin(angle) * out_cols + centre
  src_cols = -np.sin(angle) * out_rows + np.cos(angle) * out_cols + centre
  one = lambda image: jax.scipy.ndimage.map_coordinates(image, [src_rows, src_cols], order=1,  # noqa: E731
                                                         mode="constant")
  return jax.vmap(one)(images[..., 0])[..., None]


def _noise(images: jax.Array, std: float) -> jax.Array:
  noise = std * jax.random.normal(jax.random.key(NOISE_SEED), images.shape)
  return jnp.clip(images + noise, 0.0, 255.0)


PERTURBATIONS: dict[str, Callable[[jax.Array, float], jax.Array]] = {
    "blur": _blur, "thickness": _thickness, "rotation": lambda x, s: _affine(x, degrees=s),
    "translation": lambda x, s: _affine(x, shift=s), "noise": _noise}


def perturb(images: np.ndarray, name: str, strength: float) -> np.ndarray:
  """The damaged images as float32 in [0, 255]; strength 0 returns them untouched."""
  if strength == 0:
    return images
  return np.asarray(jax.jit(PERTURBATIONS[name], static_argnums=1)(jnp.asarray(images, jnp.float32),
                                                                    strength))


def batched_probabilities(probabilities_fn, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Probabilities of every image, in batches of `batch_size` (the last padded and cut off again)."""
  padded, _, _ = input_pipeline.pad_to_multiple(images, np.zeros(len(images), np.int32), batch_size)
  outputs = [np.asarray(probabilities_fn(padded[i:i + batch_size]))
             for i in range(0, len(padded), batch_size)]
  return np.concatenate(outputs)[:len(images)]


def curves(probabilities_fn, images: np.ndarray, labels: np.ndarray, batch_size: int
           ) -> dict[str, list[dict[str, float]]]:
  """name -> [{strength, accuracy, count}] over the whole set, for every perturbation and strength."""
  result = {}
  for name, strengths in STRENGTHS.items():
    result[name] = []
    for strength in strengths:
      damaged = perturb(images, name, strength)
      predictions = batched_probabilities(probabilities_fn, damaged, batch_size).argmax(-1)
      result[name].append({"strength": strength, "accuracy": float(np.mean(predictions == labels)),
                           "count": int(len(labels))})
  return result
