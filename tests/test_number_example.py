"""The README's example number: written with test digits of the asked classes, the same pixels from the same
arguments."""

import numpy as np
import pytest

from experiments import number_example


def _digits() -> tuple[np.ndarray, np.ndarray]:
  """Two 28x28 images per class; class c's images hold c + 1 columns of ink, so a crop tells its class."""
  images = np.zeros((20, 28, 28), np.uint8)
  labels = np.repeat(np.arange(10), 2)
  for index, label in enumerate(labels):
    images[index, 4:24, 4:5 + label] = 255
  return images, labels


def test_the_same_arguments_give_the_same_pixels_and_another_seed_others():
  images, labels = _digits()
  first = number_example.compose_text(images, labels, "90210")
  assert first.dtype == np.uint8 and first.ndim == 2
  np.testing.assert_array_equal(first, number_example.compose_text(images, labels, "90210"))
  assert not np.array_equal(first, number_example.compose_text(images, labels, "90210", seed=1))


def test_each_position_uses_a_digit_of_its_own_class(monkeypatch):
  images, labels = _digits()
  seen = {}
  monkeypatch.setattr(number_example.number_strings, "compose",
                      lambda digits, gaps, rng: (seen.setdefault("digits", digits), []))
  monkeypatch.setattr(number_example.number_strings, "on_paper", lambda image, rng: image)
  number_example.compose_text(images, labels, "4071")
  widths = [int((d > 0).any(axis=0).sum()) for d in seen["digits"]]
  assert widths == [5, 1, 8, 2]  # class c: c + 1 columns of ink


@pytest.mark.parametrize("text", ["9021O", "", "12 34", "٣"])
def test_anything_but_digits_is_refused(text):
  with pytest.raises(ValueError, match="digits only"):
    number_example.compose_text(*_digits(), text)
