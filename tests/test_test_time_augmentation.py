"""Test-time augmentation: exact integer shifts and the mean of the views' probabilities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.inference import test_time_augmentation as tta


def reference_shift(images: np.ndarray, down: int, right: int) -> np.ndarray:
  """Pixel by pixel: out[r, c] = in[r - down, c - right] where that lies inside the image, else 0."""
  out = np.zeros_like(images)
  height, width = images.shape[1:3]
  for r in range(height):
    for c in range(width):
      if 0 <= r - down < height and 0 <= c - right < width:
        out[:, r, c] = images[:, r - down, c - right]
  return out


def test_shifts_cover_the_square_once_unshifted_first():
  assert tta.shifts(0) == [(0, 0)]
  offsets = tta.shifts(2)
  assert offsets[0] == (0, 0) and len(offsets) == len(set(offsets)) == 25
  assert {abs(d) for offset in offsets for d in offset} == {0, 1, 2}
  with pytest.raises(ValueError, match="radius"):
    tta.shifts(-1)


@pytest.mark.parametrize("offset", [(1, 0), (0, -1), (-1, 1), (2, -2), (0, 0)])
def test_shift_moves_every_pixel_exactly(offset):
  images = np.random.default_rng(0).integers(0, 256, (3, 6, 5, 1), dtype=np.uint8)
  shifted = np.asarray(tta.shift(jnp.asarray(images), *offset))
  assert shifted.dtype == np.uint8
  np.testing.assert_array_equal(shifted, reference_shift(images, *offset))


def test_averaged_log_probabilities_are_the_mean_of_the_views_softmax():
  rng = np.random.default_rng(1)
  weights = rng.normal(size=(6 * 6, 4)).astype(np.float32)
  logits_fn = lambda images: images.reshape(len(images), -1) @ weights  # noqa: E731
  images = rng.uniform(0, 1, (5, 6, 6, 1)).astype(np.float32)
  assert tta.averaged_log_probabilities_fn(logits_fn, 0) is logits_fn
  averaged = np.asarray(jax.jit(tta.averaged_log_probabilities_fn(logits_fn, 1))(images), np.float64)
  views = [logits_fn(reference_shift(images, *offset)).astype(np.float64) for offset in tta.shifts(1)]
  expected = np.mean([np.exp(v - np.log(np.exp(v).sum(-1, keepdims=True))) for v in views], axis=0)
  # float32 logits of size ~10 and a log-sum-exp: a few float32 ulps of 1, relative.
  np.testing.assert_allclose(np.exp(averaged), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.exp(averaged).sum(-1), 1.0, rtol=1e-5)


def test_far_apart_logits_do_not_underflow_to_minus_infinity():
  """A class with probability far below float32's smallest keeps a finite log-probability."""
  logits_fn = lambda images: jnp.stack([images.sum((1, 2, 3)), jnp.zeros(len(images))], -1)  # noqa: E731
  averaged = tta.averaged_log_probabilities_fn(logits_fn, 1)(jnp.full((2, 4, 4, 1), 100.0))
  assert np.all(np.isfinite(np.asarray(averaged)))
