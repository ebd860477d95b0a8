"""number_strings: the same seed composes the same string, and the summary's groups, intervals and flags."""

import numpy as np
import pytest

from experiments import number_strings


def test_the_benchmark_composes_the_same_string_from_the_same_seed():
  digits = np.zeros((20, 28, 28), np.uint8)
  digits[:, 4:24, 10:16] = 200
  labels = np.arange(20) % 10
  first, second = (number_strings.make_string(digits, labels, np.random.default_rng([3, 7]), "touching",
                                              "paper") for _ in range(2))
  assert np.array_equal(first[0], second[0]) and first[1] == second[1]
  assert 5 <= len(first[1]) <= 10 and first[0].dtype == np.uint8
  fives = {len(number_strings.make_string(digits, labels, np.random.default_rng([3, i]), "wide", "black",
                                          lengths=(5, 5))[1]) for i in range(5)}
  assert fives == {5}


def _record(spacing: str, right: bool, weakest: float = 1.0) -> dict:
  return {"spacing": spacing, "rendering": "black", "length": 5, "truth": "12345", "right": right,
          "edits": 0 if right else 1, "weakest": weakest}


def test_the_summary_counts_each_group_with_its_interval():
  records = [_record("wide", True)] * 9 + [_record("wide", False, 0.1)] + [_record("narrow", True)] * 90
  result = number_strings.summary(records, threshold=0.5)
  wide, narrow = result["groups"]["wide"], result["groups"]["narrow"]
  assert (wide["strings"], wide["string_accuracy"], wide["digit_accuracy"]) == (10, 0.9, 1 - 1 / 50)
  for row in (wide, narrow, result["groups"]["all"]):
    low, high = row["interval"]
    assert low <= row["string_accuracy"] <= high
  # Wilson's interval for 9 of 10 by hand: (0.9 + z^2/20 +- z sqrt(0.009 + z^2/400)) / (1 + z^2/10), z = 1.96.
  assert wide["interval"] == pytest.approx([0.5958, 0.9821], abs=1e-4)
  assert narrow["interval"][1] == 1.0 and narrow["interval"][0] > wide["interval"][0]  # more strings, tighter
  assert result["flagged"] == 1 and result["unflagged_accuracy"] == 1.0
