"""Random affine augmentation (translation, rotation, scale), computed on device inside the train step.

Each image gets its own transform drawn from the step's rng, so a run is deterministic given its seed
and independent of host threads. Pixels are resampled bilinearly; what falls outside is background (0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _sample_coordinates(rng: jax.Array, height: int, width: int, *, max_translate: float,
                        max_rotate_deg: float, max_scale: float) -> jax.Array:
  """Source coordinates (2, H, W) for one output image under a random affine map."""
  k_angle, k_scale, k_shift = jax.random.split(rng, 3)
  angle = jnp.deg2rad(jax.random.uniform(k_angle, (), minval=-max_rotate_deg, maxval=max_rotate_deg))
  scale = jax.random.uniform(k_scale, (), minval=1.0 - max_scale, maxval=1.0 + max_scale)
  shift = jax.random.uniform(k_shift, (2,), minval=-max_translate, maxval=max_translate)

  center = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0])
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  out = jnp.stack([rows, cols]) - (center + shift)[:, None, None]
  # Inverse map: rotate by -angle and divide by the scale to find where each output pixel comes from.
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_rows = (cos * out[0] + sin * out[1]) / scale
  src_cols = (-sin * out[0] + cos * out[1]) / scale
  return jnp.stack([src_rows, src_cols]) + center[:, None, None]


def random_affine(images: jax.Array, rng: jax.Array, *, max_translate: float,
                  max_rotate_deg: float, max_scale: float) -> jax.Array:
  """Applies an independent random affine map to every image of an NHWC batch (float pixels)."""
  return random_affine_with_keys(images, jax.random.split(rng, images.shape[0]),
                                 max_translate=max_translate, max_rotate_deg=max_rotate_deg,
                                 max_scale=max_scale)


def random_affine_with_keys(images: jax.Array, keys: jax.Array, *, max_translate: float,
                            max_rotate_deg: float, max_scale: float) -> jax.Array:
  """As `random_affine`, with one key per image given: a device can augment its slice of a global
  batch exactly as the whole batch would be augmented in one place."""
  _, height, width, channels = images.shape

  def one(image: jax.Array, key: jax.Array) -> jax.Array:
    coords = _sample_coordinates(key, height, width, max_translate=max_translate,
                                 max_rotate_deg=max_rotate_deg, max_scale=max_scale)
    channel_maps = [
        jax.scipy.ndimage.map_coordinates(image[..., c], list(coords), order=1, mode="constant")
        for c in range(channels)
    ]
    return jnp.stack(channel_maps, axis=-1)

  return jax.vmap(one)(images, keys)
