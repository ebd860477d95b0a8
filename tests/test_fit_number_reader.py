"""fit_number_reader: coordinate descent finds priors that read better, the threshold is the lowest that
reaches its target, and the fitted verifier reads more strings right than the priors alone."""

import numpy as np

from alexnet_jax.inference import number_reader, read_number
from experiments import fit_number_reader
from tests.test_number_reader import SureOfEverything
from tests.test_read_number import ReadsEverything, ring


def test_fitting_the_priors_improves_what_they_are_fitted_on():
  """Strings of rings apart, one of them wide, read by the recogniser sure of fragments: from priors that
  allow any cut, coordinate descent finds priors that read them all right."""
  strings = []
  for wide in (22, 26, 30):
    canvas = np.zeros((50, 120), np.uint8)
    ring(canvas, 10, 12, width=14)
    ring(canvas, 32, 12, width=wide)
    ring(canvas, 40 + wide, 12, width=14)
    strings.append({"truth": "000", "candidates": read_number.find_candidates(canvas, ReadsEverything())})
  loose = read_number.Priors(cut=0, narrow_cut=0, crossing=0, wide=0, digit=-1)
  grid = {"cut": (0, 1, 2, 4), "narrow_cut": (0, 4, 16), "digit": (-1, 0, 1)}
  before = fit_number_reader.fit_objective(strings, loose)
  fitted = fit_number_reader.fit_priors(strings, loose, grid)
  after = fit_number_reader.fit_objective(strings, fitted)
  assert before[0] < len(strings) == after[0]
  assert {name: getattr(fitted, name) for name in grid} != {name: getattr(loose, name) for name in grid}


def test_the_threshold_is_the_lowest_that_reaches_the_target():
  records = [{"weakest": w, "right": r} for w, r in [(0.2, False), (0.5, True), (0.6, False), (0.9, True),
                                                    (0.95, True)]]
  assert fit_number_reader.pick_threshold(records, 0.99) == 0.9
  assert fit_number_reader.pick_threshold(records, 0.7) == 0.5


class SeesTheShape(SureOfEverything):
  """Sure of everything too, but its features hold the ink's aspect and its square: a band of widths
  (a digit's, between a fragment's and a merge's) is linear in them."""

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities, _ = super().__call__(images)
    ink = images[..., 0] > 128
    aspect = ink.any(axis=1).sum(axis=1) / ink.any(axis=2).sum(axis=1)
    return probabilities, np.column_stack([aspect, aspect ** 2, np.zeros_like(aspect)]).astype(np.float32)


def test_the_benchmark_fits_a_reader_that_reads_its_validation_strings():
  """Touching pairs of narrow rings and single wide rings, read by a network sure of everything: the
  fitted verifier (its features show a fragment, a digit or a merge) reads more of them right than the
  priors alone."""
  strings = []
  for index in range(10):
    canvas = np.zeros((50, 80), np.uint8)
    if index % 2:
      width = 13 + index % 3
      ring(canvas, 10, 12, width=width)
      ring(canvas, 10 + width, 12, width=width)
      truth, boxes = "00", [[10, 12, width, 26], [10 + width, 12, width, 26]]
    else:
      ring(canvas, 10, 12, width=16 + index % 4)
      truth, boxes = "0", [[10, 12, 16 + index % 4, 26]]
    strings.append({"index": index, "spacing": "touching", "rendering": "black", "image": canvas,
                    "truth": truth, "true_boxes": boxes,
                    "candidates": read_number.find_candidates(canvas, SeesTheShape())})
  before = fit_number_reader.fit_objective(strings, read_number.PRIORS)[0]
  reader, report = fit_number_reader.fit_reader(strings)
  assert report["l2"] in number_reader.L2_GRID and report["strings"] == len(strings)
  assert before < fit_number_reader.fit_objective(strings, reader.priors, reader)[0]
