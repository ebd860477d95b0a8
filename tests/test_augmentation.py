"""On-device random affine augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from alexnet_jax.data import augmentation


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


def test_elastic_off_leaves_the_affine_draws_exactly_as_they_were():
  images = _digit_like_batch()
  kwargs = {"max_translate": 2.0, "max_rotate_deg": 10.0, "max_scale": 0.1}
  plain = augmentation.random_affine(images, jax.random.key(0), **kwargs)
  off = augmentation.random_affine(images, jax.random.key(0), elastic_alpha=0.0, **kwargs)
  on = augmentation.random_affine(images, jax.random.key(0), elastic_alpha=34.0, **kwargs)
  assert jnp.array_equal(plain, off)
  assert not jnp.array_equal(plain, on)


def test_elastic_field_is_smooth_and_scales_with_alpha():
  """Neighbouring pixels move alike (the point of the smoothing); the field is linear in alpha; with
  sigma 4 and alpha 34 (Simard et al.'s setting) a pixel moves about a pixel or two."""
  key = jax.random.key(5)
  field = augmentation.elastic_displacement(key, 28, 28, alpha=34.0, sigma=4.0)
  double = augmentation.elastic_displacement(key, 28, 28, alpha=68.0, sigma=4.0)
  np.testing.assert_allclose(double, 2 * field, rtol=1e-5, atol=1e-6)
  centre = np.asarray(field[:, 6:22, 6:22])
  neighbour_correlation = np.corrcoef(centre[:, :, :-1].ravel(), centre[:, :, 1:].ravel())[0, 1]
  assert neighbour_correlation > 0.9
  assert 0.3 < np.sqrt(np.mean(centre ** 2)) < 3.0
  raw = jax.random.uniform(jax.random.key(5), (2, 28, 28), minval=-1.0, maxval=1.0)
  assert abs(np.corrcoef(raw[:, :, :-1].ravel(), raw[:, :, 1:].ravel())[0, 1]) < 0.1


def test_gaussian_kernel_is_normalised_and_symmetric():
  kernel = np.asarray(augmentation.gaussian_kernel(4.0))
  assert kernel.shape == (25,)
  np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(kernel, kernel[::-1])
  assert kernel.argmax() == 12


def test_elastic_distortion_keeps_the_ink_roughly_and_moves_it():
  images = _digit_like_batch()
  out = augmentation.random_affine(images, jax.random.key(2), max_translate=0.0, max_rotate_deg=0.0,
                                   max_scale=0.0, elastic_alpha=34.0, elastic_sigma=4.0)
  ink_before, ink_after = float(images.sum()), float(out.sum())
  assert abs(ink_after - ink_before) < 0.5 * ink_before  # stretching changes the area a little
  assert float(jnp.abs(out - images).sum()) > 0.05 * ink_before


def test_smoothing_matrix_is_the_zero_padded_convolution():
  """The matrix form against numpy's convolution of each row and column (float64 reference)."""
  field = np.random.default_rng(0).uniform(-1, 1, (28, 28))
  kernel = np.asarray(augmentation.gaussian_kernel(4.0), np.float64)
  radius = len(kernel) // 2

  def smooth(v):
    return np.convolve(v, kernel, mode="full")[radius:radius + len(v)]

  expected = np.apply_along_axis(smooth, 1, np.apply_along_axis(smooth, 0, field))
  matrix = np.asarray(augmentation.smoothing_matrix(28, 4.0), np.float64)
  np.testing.assert_allclose(matrix @ field @ matrix.T, expected, atol=1e-6)
  # sigma 6: the kernel (37 taps) is longer than the image
  wide = np.asarray(augmentation.smoothing_matrix(28, 6.0))
  assert wide.shape == (28, 28) and np.all(wide[0, :19] > 0) and wide[0, 19] == 0


def test_gaussian_blur_is_scipys_gaussian_filter():
  """Against scipy.ndimage.gaussian_filter, zero beyond the border and truncated at the same 3 sigma
  (float64 reference; the difference is float32 rounding of sums of at most 28 x 28 terms below 1)."""
  image = np.random.default_rng(1).uniform(0, 1, (28, 28))
  for sigma in (0.7, 1.5, 2.5):
    expected = ndimage.gaussian_filter(image, sigma, mode="constant", truncate=3.0)
    blurred = augmentation.gaussian_blur(jnp.asarray(image[..., None], jnp.float32), sigma)
    np.testing.assert_allclose(np.asarray(blurred)[..., 0], expected, atol=1e-5)


def test_blur_width_may_be_traced_under_one_radius():
  image = _digit_like_batch()[0]
  traced = jax.jit(lambda s: augmentation.gaussian_blur(image, s, radius=8))(jnp.float32(1.2))
  np.testing.assert_allclose(traced, augmentation.gaussian_blur(image, 1.2, radius=8), atol=1e-4)
  identity = augmentation.gaussian_blur(image, 1e-3, radius=8)
  np.testing.assert_allclose(identity, image, atol=1e-4)


def test_random_blur_keeps_the_ink_spreads_it_and_leaves_other_draws_alone():
  images = _digit_like_batch()  # the bar lies well inside: no ink is lost past the border
  kwargs = {"max_translate": 2.0, "max_rotate_deg": 10.0, "max_scale": 0.1}
  plain = augmentation.random_affine(images, jax.random.key(4), **kwargs)
  blurred = augmentation.random_affine(images, jax.random.key(4), max_blur_sigma=2.0, **kwargs)
  np.testing.assert_allclose(blurred.sum((1, 2, 3)), plain.sum((1, 2, 3)), rtol=1e-3)
  assert bool(jnp.all((blurred > 1.0).sum((1, 2, 3)) >= (plain > 1.0).sum((1, 2, 3))))
  assert bool(jnp.all(blurred.max((1, 2, 3)) <= plain.max((1, 2, 3)) + 1e-3))
  assert not jnp.array_equal(blurred, plain)
  widths = [float(jnp.abs(blurred[i] - plain[i]).sum()) for i in range(4)]
  assert len(set(widths)) == 4, "each image draws its own width"


def test_stroke_width_is_grey_dilation_and_erosion_at_its_ends():
  image = np.asarray(_digit_like_batch()[0])  # a 8 x 4 bar
  wide = np.asarray(augmentation.stroke_width(jnp.asarray(image), 1.0))
  thin = np.asarray(augmentation.stroke_width(jnp.asarray(image), -1.0))
  np.testing.assert_array_equal(wide, ndimage.grey_dilation(image, size=(3, 3, 1), mode="constant"))
  np.testing.assert_array_equal(thin, ndimage.grey_erosion(image, size=(3, 3, 1), mode="constant"))
  assert (wide > 0).sum() == 10 * 6 and (thin > 0).sum() == 6 * 2
  half = np.asarray(augmentation.stroke_width(jnp.asarray(image), 0.5))
  np.testing.assert_allclose(half, (image + wide) / 2)
  np.testing.assert_array_equal(augmentation.stroke_width(jnp.asarray(image), 0.0), image)


def test_random_stroke_width_thickens_some_thins_others_and_leaves_other_draws_alone():
  images = jnp.tile(_digit_like_batch()[:1], (16, 1, 1, 1))
  kwargs = {"max_translate": 0.0, "max_rotate_deg": 0.0, "max_scale": 0.0}
  plain = augmentation.random_affine(images, jax.random.key(6), max_blur_sigma=1.0, **kwargs)
  stroked = augmentation.random_affine(images, jax.random.key(6), max_stroke=1.0, **kwargs)
  ink = np.asarray(stroked.sum((1, 2, 3)))
  original = float(images[0].sum())
  assert (ink > original * 1.05).any() and (ink < original * 0.95).any()
  both = augmentation.random_affine(images, jax.random.key(6), max_stroke=1.0, max_blur_sigma=1.0, **kwargs)
  assert not jnp.array_equal(both, plain)
  np.testing.assert_allclose(both.sum((1, 2, 3)), stroked.sum((1, 2, 3)), rtol=1e-3)
