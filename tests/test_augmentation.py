"""On-device random affine augmentation."""

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import augmentation


def _digit_like_batch():
  images = np.zeros((4, 28, 28, 1), np.float32)
  images[:, 10:18, 12:16, 0] = 255.0
  return jnp.asarray(images)


def test_zero_ranges_are_the_identity():
  images = _digit_like_batch()
  out = augmentation.random_affine(images, jax.random.key(0), max_translate=0.0, max_rotate_deg=0.0,
                                   max_scale=0.0)
  np.testing.assert_allclose(out, images, atol=1e-3)


def test_deterministic_given_the_key_and_different_across_keys():
  images = _digit_like_batch()
  kwargs = {"max_translate": 2.0, "max_rotate_deg": 10.0, "max_scale": 0.1}
  a = augmentation.random_affine(images, jax.random.key(0), **kwargs)
  b = augmentation.random_affine(images, jax.random.key(0), **kwargs)
  c = augmentation.random_affine(images, jax.random.key(1), **kwargs)
  assert jnp.array_equal(a, b)
  assert not jnp.array_equal(a, c)
  assert not jnp.array_equal(a[0], a[1]), "each image gets its own transform"


def test_translation_moves_the_centre_of_mass_within_range():
  images = _digit_like_batch()
  out = augmentation.random_affine(images, jax.random.key(3), max_translate=2.0, max_rotate_deg=0.0,
                                   max_scale=0.0)
  rows = jnp.arange(28.0)[None, :, None, None]
  com_before = jnp.sum(images * rows, (1, 2, 3)) / jnp.sum(images, (1, 2, 3))
  com_after = jnp.sum(out * rows, (1, 2, 3)) / jnp.sum(out, (1, 2, 3))
  shift = jnp.abs(com_after - com_before)
  assert bool(jnp.all(shift <= 2.0 + 1e-3)) and bool(jnp.any(shift > 0.1))
