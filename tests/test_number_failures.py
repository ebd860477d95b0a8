"""number_failures: each wrong reading lands in the kind that says what reading it right needed, and the
path-choice margin is the score read_number maximises, split into its terms."""

import numpy as np
import pytest

from alexnet_jax.inference import read_number
from experiments import fit_number_reader, number_failures
from tests.test_number_reader import SureOfEverything, touching_pair

# Any merge is cheaper than two digits: the touching pair is read as one 0. The cut between the two costs
# a little, so that the boundaries' term is not zero.
MERGING = read_number.Priors(digit=5.0, cut=0.5, narrow_cut=0.0, wide=0.0, merge=0.0, crossing=0.0)


class SureOfSevens(SureOfEverything):
  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities, features = super().__call__(images)
    return np.roll(probabilities, 7, axis=1), features  # sure of 7, not 0


def string(spacing: str, recogniser, shift: int = 0) -> dict:
  canvas, boxes = touching_pair()
  return {"index": 0, "spacing": spacing, "rendering": "black", "image": canvas, "truth": "00",
          "true_boxes": [[x + shift, y, w, h] for x, y, w, h in boxes],
          "candidates": read_number.find_candidates(canvas, recogniser)}


def test_a_merge_that_outscores_the_right_path_is_a_path_choice_and_its_margin_is_the_score():
  candidates = string("touching", SureOfEverything())["candidates"]
  chosen = list(read_number.choose_path(candidates, MERGING).segments)
  assert len(chosen) == 1  # read as "0": wrong
  kind, right = number_failures.failure_kind(candidates, "00", touching_pair()[1], MERGING)
  assert kind == "path choice" and len(right) == 2
  scores, boundaries = candidates.segment_scores(MERGING), candidates.boundary_scores(MERGING)
  terms = number_failures.score_terms(candidates, [chosen, right], MERGING)
  for path, path_terms in zip((chosen, right), terms, strict=True):
    total = scores[path].sum() + boundaries[candidates.segments[path, 1]].sum()
    assert path_terms.sum() == pytest.approx(total, abs=1e-9)
  margin = terms[0] - terms[1]
  assert margin.sum() >= 0 and margin[number_failures.TERMS.index("segment priors")] > 0
  assert margin[number_failures.TERMS.index("boundaries")] == pytest.approx(0.5)  # the one cut, not taken


def test_misread_whole_digits_and_missing_ones_are_told_apart():
  misread = string("touching", SureOfSevens())
  kind, _ = number_failures.failure_kind(misread["candidates"], "00", misread["true_boxes"], MERGING)
  assert kind == "misread"
  elsewhere = string("touching", SureOfEverything(), shift=60)
  assert number_failures.failure_kind(elsewhere["candidates"], "00", elsewhere["true_boxes"],
                                      MERGING) == ("no whole segmentation", [])


def test_diagnose_counts_each_mistake_once_and_the_digits_without_a_whole_candidate():
  strings = [string("touching", SureOfEverything()), string("narrow", SureOfSevens()),
             string("wide", SureOfEverything(), shift=60)]
  records = fit_number_reader.read_strings(strings, MERGING)
  assert not any(r["right"] for r in records)
  failures = number_failures.diagnose(strings, records, MERGING)
  expected = {"touching": "path choice", "narrow": "misread", "wide": "no whole segmentation"}
  for spacing, kind in expected.items():
    assert failures["mistakes"][spacing] == {k: int(k == kind) for k in number_failures.KINDS}
  assert set(failures["path_choice_margin"]) == {"touching"}
  assert failures["no_whole_candidate"] == {"0": 2 / 6}
