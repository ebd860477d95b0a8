"""number_reader: the labels of composed strings' candidates, the verifier's fit, its path score (a merge
the bare network reads confidently is cut), storage per checkpoint and the fallback without one."""

import json
import logging

import numpy as np
import pytest

from alexnet_jax.inference import number_reader, read_number
from tests.test_read_number import ring

FEATURES = 3  # the fake network's penultimate width


class SureOfEverything:
  """A network sure that every candidate is a 0, merges and fragments included, with constant features."""

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.full((len(images), 10), 0.01 / 9)
    probabilities[:, 0] = 0.99
    return probabilities, np.ones((len(images), FEATURES), np.float32)


def touching_pair() -> tuple[np.ndarray, list[list[int]]]:
  """Two narrow rings touching (one component, 0.92 digit heights wide) and their true boxes."""
  canvas = np.zeros((50, 70), np.uint8)
  ring(canvas, 10, 12, width=12)
  ring(canvas, 22, 12, width=12)
  return canvas, [[10, 12, 12, 26], [22, 12, 12, 26]]


def width_verifier(**kwargs) -> number_reader.NumberReader:
  """A verifier that reads only the candidate's width: wider than 0.7 digit heights is not one digit."""
  size = FEATURES + len(number_reader.GEOMETRY)
  weights = np.zeros(size)
  weights[FEATURES + number_reader.GEOMETRY.index("width")] = -80.0
  return number_reader.NumberReader(np.zeros(size), np.ones(size), weights, 56.0, **kwargs)


def test_a_merge_and_the_fragments_are_not_whole_digits_and_the_true_boxes_are():
  canvas, truth = touching_pair()
  candidates = read_number.find_candidates(canvas, SureOfEverything())
  labels = number_reader.whole_labels(candidates.boxes, truth)
  boxes = [tuple(int(v) for v in box) for box in candidates.boxes]
  whole = {box for box, label in zip(boxes, labels, strict=True) if label}
  assert whole and all(abs(x0 - 10) <= 2 or abs(x1 - 34) <= 2 for x0, _, x1, _ in whole)
  for left in (10, 22):  # each ring's own box (cut at the column where they touch) is whole
    assert any(abs(x0 - left) <= 1 and abs(x1 - (left + 12)) <= 1 for x0, _, x1, _ in whole)
  assert all(8 < x1 - x0 < 16 for x0, _, x1, _ in whole)  # IoU >= 0.8 of 12 px, give or take a pixel a side
  merge = boxes.index((10, 12, 34, 38))
  assert not labels[merge]
  assert not labels[np.argmin(candidates.width)]  # the narrowest slice: a fragment


def test_a_box_is_its_digit_whether_exact_or_a_pixel_inside_and_a_merge_or_a_half_is_none():
  """A narrow 1 (4 px wide) and a 14 x 20 digit: their exact boxes and the boxes a pixel inside on every
  side are theirs (a fixed 1-pixel widening failed the exact ones), the 1's right pixel is a fragment, and
  the pair's union, the wide digit's left half or the wide digit with 4 px of its neighbour is neither."""
  truth = [[10, 10, 4, 20], [16, 10, 14, 20]]  # [x, y, w, h]
  boxes = np.array([[10, 10, 14, 30], [16, 10, 30, 30],  # exact (x0, y0, x1, y1)
                    [11, 11, 13, 29], [17, 11, 29, 29],  # a pixel inside
                    [13, 10, 14, 30],  # the 1's right pixel
                    [10, 10, 30, 30], [16, 10, 23, 30], [12, 10, 30, 30]])  # the merge, a half, a half-merge
  assert number_reader.matched_digits(boxes, truth).tolist() == [0, 1, 0, 1, -1, -1, -1, -1]
  assert number_reader.whole_labels(boxes, truth).tolist() == [True] * 4 + [False] * 4


def test_the_bare_network_merges_the_pair_and_the_verifier_cuts_it():
  canvas, _ = touching_pair()
  assert read_number.read_number(canvas, SureOfEverything()).text == "0"
  reading = read_number.read_number(canvas, SureOfEverything(), **width_verifier().options())
  assert reading.text == "00"
  (x0, _, w0, _), (x1, _, w1, _) = (d.box for d in reading.digits)
  assert abs(x0 + w0 - 22) <= 2 and abs(x1 - 22) <= 2


def test_the_verifier_s_score_makes_a_doubtful_digit_uncertain():
  """The flag weighs the same per-digit score as the path: P(whole) of 0.05 makes every reading doubtful,
  a verifier sure of every candidate leaves the bare score as it was."""
  candidates = read_number.find_candidates(touching_pair()[0], SureOfEverything())
  bare = read_number.choose_path(candidates)
  sure, doubtful = (constant_verifier(bias) for bias in (30.0, np.log(0.05 / 0.95)))
  assert read_number.choose_path(candidates, verifier=sure).weakest == pytest.approx(bare.weakest)
  assert read_number.choose_path(candidates, verifier=doubtful).weakest <= 0.05 * bare.weakest + 1e-9
  canvas, _ = touching_pair()
  assert read_number.read_number(canvas, SureOfEverything(), uncertain_below=0.5 * bare.weakest,
                                 verifier=doubtful).uncertain


def constant_verifier(bias: float) -> number_reader.NumberReader:
  size = FEATURES + len(number_reader.GEOMETRY)
  return number_reader.NumberReader(np.zeros(size), np.ones(size), np.zeros(size), bias)


def test_the_fit_separates_a_separable_case_on_unstandardised_columns():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 5)) * [1, 10, 0.1, 1, 1] + [0, 50, 0, 0, 0]
  y = x[:, 0] + 0.05 * (x[:, 1] - 50) > 0
  reader = number_reader.fit_verifier(x[:300], y[:300], l2=1e-3)
  assert number_reader.held_out_figures(reader, x[300:], y[300:])["accuracy"] >= 0.95
  assert np.mean((reader.log_whole_of(x) > np.log(0.5)) == y) >= 0.97
  assert abs(reader.weights[0]) > 5 * abs(reader.weights[2])  # the noise column barely counts
  strong = number_reader.fit_verifier(x, y, l2=1.0)
  assert np.linalg.norm(strong.weights) < np.linalg.norm(reader.weights)


def test_precomputed_scores_are_looked_up_per_candidates():
  canvas, _ = touching_pair()
  candidates = read_number.find_candidates(canvas, SureOfEverything())
  scores = number_reader.Precomputed()
  scores.add(candidates, width_verifier().log_whole(candidates))
  assert read_number.choose_path(candidates, verifier=scores) == read_number.choose_path(
      candidates, verifier=width_verifier())


def test_the_reader_round_trips_per_checkpoint(tmp_path):
  reader = width_verifier(priors=read_number.Priors(cut=0.5), uncertain_below=0.42)
  number_reader.store(str(tmp_path), "ema", 100, reader, {"seconds": 1.0})
  number_reader.store(str(tmp_path), "raw", 100, width_verifier())
  loaded = number_reader.load(str(tmp_path), "ema", 100)
  assert loaded.priors == reader.priors and loaded.uncertain_below == 0.42 and loaded.bias == reader.bias
  assert np.array_equal(loaded.weights, reader.weights) and np.array_equal(loaded.scale, reader.scale)
  assert number_reader.load(str(tmp_path), "raw", 100).uncertain_below == read_number.UNCERTAIN_BELOW
  assert number_reader.load(str(tmp_path), "ema", 200) is None
  entries = json.loads((tmp_path / number_reader.READER_FILE).read_text())
  assert set(entries) == {"ema@100", "raw@100"} and entries["ema@100"]["fit_on"] == "validation"


class FakePredictor:
  """What `for_predictor` reads of a predict.Predictor."""

  def __init__(self, workdir: str):
    self.workdir, self.weights, self.checkpoint_step = workdir, "ema", 7

  def __call__(self, images, preprocessed=False):
    return SureOfEverything()(images)[0]

  def probabilities_and_features(self, images, preprocessed=False):
    return SureOfEverything()(images)


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"ema@7": {"mean": [1]}}'])
def test_a_damaged_reader_is_reported_in_one_line_and_the_priors_read_alone(tmp_path, caplog, damage):
  (tmp_path / number_reader.READER_FILE).write_text(damage)
  with caplog.at_level(logging.WARNING):
    probabilities_fn, options = number_reader.for_predictor(FakePredictor(str(tmp_path)))
  assert options == {}
  messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("cannot be read" in m and "\n" not in m for m in messages)
  canvas, _ = touching_pair()
  assert read_number.read_number(canvas, probabilities_fn, **options).text == "0"


def test_a_stored_reader_is_used_and_none_is_warned_of(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    _, options = number_reader.for_predictor(FakePredictor(str(tmp_path)))
  assert options == {} and any("no number reader stored for ema@7" in r.getMessage() for r in caplog.records)
  number_reader.store(str(tmp_path), "ema", 7, width_verifier())
  probabilities_fn, options = number_reader.for_predictor(FakePredictor(str(tmp_path)))
  canvas, _ = touching_pair()
  assert read_number.read_number(canvas, probabilities_fn, **options).text == "00"


def test_candidates_without_features_are_refused_by_a_verifier():
  canvas, _ = touching_pair()
  with pytest.raises(ValueError, match="no penultimate features"):
    read_number.read_number(canvas, lambda images: SureOfEverything()(images)[0], verifier=width_verifier())


def test_storing_over_a_damaged_file_keeps_it_aside(tmp_path):
  """As calibration.json: the damaged bytes are moved aside, never lost, and the new entry is readable."""
  (tmp_path / number_reader.READER_FILE).write_text("{not json")
  number_reader.store(str(tmp_path), "ema", 7, width_verifier())
  kept = list(tmp_path.glob(number_reader.READER_FILE + ".damaged-*"))
  assert len(kept) == 1 and kept[0].read_text() == "{not json"
  assert number_reader.load(str(tmp_path), "ema", 7) is not None
