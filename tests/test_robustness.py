"""The damage the robustness curves apply: identity at strength 0, and each perturbation doing what its
name says on a known image."""

import numpy as np
import pytest

from alexnet_jax.analysis import robustness


def _bar():
  image = np.zeros((1, 28, 28, 1), np.float32)
  image[0, 8:20, 13:15] = 255.0  # a vertical bar, 2 px wide, in the middle
  return image


@pytest.mark.parametrize("name", list(robustness.STRENGTHS))
def test_strength_zero_is_the_identity_and_every_curve_has_it(name):
  image = _bar()
  assert robustness.perturb(image, name, 0) is image
  assert 0 in robustness.STRENGTHS[name]


def test_blur_spreads_ink_and_keeps_its_mass():
  blurred = robustness.perturb(_bar(), "blur", 1.5)
  assert blurred.max() < 255.0 and np.count_nonzero(blurred > 1) > np.count_nonzero(_bar())
  assert abs(blurred.sum() - _bar().sum()) / _bar().sum() < 1e-3  # the bar is far from the border


def test_thickness_dilates_and_erodes():
  wide = robustness.perturb(_bar(), "thickness", 1)
  assert np.count_nonzero(wide[0, 14]) == 4  # 2 px + one each side
  assert robustness.perturb(_bar(), "thickness", -1).max() == 0.0  # a 2 px stroke erodes away


def test_rotation_and_translation_move_the_ink():
  rotated = robustness.perturb(_bar(), "rotation", 90)[0, ..., 0]
  rows, cols = np.nonzero(rotated > 128)
  assert np.ptp(cols) > np.ptp(rows)  # the vertical bar lies down
  shifted = robustness.perturb(_bar(), "translation", 3)[0, ..., 0]
  assert np.allclose(shifted[11:23, 16:18], 255.0) and shifted[8:20, 13].max() < 1.0


def test_noise_is_seeded_and_clipped():
  a = robustness.perturb(_bar(), "noise", 64)
  np.testing.assert_array_equal(a, robustness.perturb(_bar(), "noise", 64))
  assert a.min() >= 0.0 and a.max() <= 255.0 and a.std() > 30


def test_curves_count_every_image_and_start_at_the_plain_accuracy():
  images = np.concatenate([_bar(), np.zeros((2, 28, 28, 1), np.float32)])
  labels = np.array([1, 0, 0])

  def bar_detector(batch):  # "1" where the middle column holds ink
    ink = np.asarray(batch)[:, 8:20, 13, 0].mean(axis=1) > 100
    return np.stack([~ink, ink] + [np.zeros_like(ink)] * 8, axis=1).astype(np.float32)

  curves = robustness.curves(bar_detector, images, labels, batch_size=2)
  assert set(curves) == set(robustness.STRENGTHS)
  for points in curves.values():
    zero = next(p for p in points if p["strength"] == 0)
    assert zero["accuracy"] == 1.0 and all(p["count"] == 3 for p in points)
  assert curves["translation"][0]["accuracy"] < 1.0  # moved 6 px, the bar leaves the detector's column
