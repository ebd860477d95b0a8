"""read_number: polarity, boxes, cuts and merges chosen by the recogniser, one batch per image, the
uncertainty flag (synthetic glyphs and a fake recogniser); real MNIST strings and `predict --number`."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax.inference import digit_image, predict, read_number
from experiments import number_strings, varied_digits
from tests.conftest import REPO_ROOT

SURE = 0.95


def _answer(digit: int | None) -> np.ndarray:
  if digit is None:  # not a glyph the fake knows: no opinion
    return np.full(10, 0.1)
  probabilities = np.full(10, (1 - SURE) / 9)
  probabilities[digit] = SURE
  return probabilities


def _glyph(field: np.ndarray) -> int | None:
  """The fake recogniser's reading of one image in MNIST form: a ring is 0, a thin bar 1, a T 7."""
  ink = field[..., 0] > 128
  rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
  box = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  height, width = box.shape
  if width <= 8 and height >= 16:
    return 1
  if height >= width and box[:2].mean() > 0.9 and box[-3:, :width // 3].mean() < 0.1:
    return 7
  middle = box[height // 3:2 * height // 3, width // 3:2 * width // 3]
  if width >= 12 and not middle.any() and box[:, :2].mean() > 0.7 and box[:, -2:].mean() > 0.7:
    return 0
  return None


class FakeRecogniser:
  """probabilities_fn for synthetic glyphs; counts its calls and the images it was given."""

  def __init__(self):
    self.batches = []

  def __call__(self, images: np.ndarray) -> np.ndarray:
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 1)
    self.batches.append(len(images))
    return np.stack([_answer(_glyph(x)) for x in images])


def ring(canvas: np.ndarray, x: int, y: int, width: int = 20, height: int = 26) -> None:
  canvas[y:y + height, x:x + width] = 255
  canvas[y + 4:y + height - 4, x + 4:x + width - 4] = 0


def bar(canvas: np.ndarray, x: int, y: int, width: int = 6, height: int = 26) -> None:
  canvas[y:y + height, x:x + width] = 255


def string_image() -> np.ndarray:
  """'1 0 1 0' on black: rings and bars apart."""
  canvas = np.zeros((50, 130), np.uint8)
  bar(canvas, 10, 12)
  ring(canvas, 24, 12)
  bar(canvas, 60, 13)
  ring(canvas, 80, 11)
  return canvas


def test_reads_glyphs_apart_with_their_boxes_in_input_pixels():
  reading = read_number.read_number(string_image(), FakeRecogniser())
  assert reading.text == "1010"
  assert [d.box for d in reading.digits] == [(10, 12, 6, 26), (24, 12, 20, 26), (60, 13, 6, 26),
                                             (80, 11, 20, 26)]
  assert not reading.uncertain and reading.confidence == pytest.approx(SURE ** 4)
  assert all(len(d.probabilities) == 10 for d in reading.digits)


def test_dark_ink_on_light_paper_reads_as_light_ink_on_black():
  light, dark = FakeRecogniser(), FakeRecogniser()
  on_black = read_number.read_number(string_image(), light)
  on_paper = read_number.read_number(255 - string_image(), dark)
  assert on_paper == on_black
  rgb = np.repeat((255 - string_image())[..., None], 3, axis=-1)
  assert read_number.read_number(rgb, FakeRecogniser()) == on_black


def test_uneven_lighting_is_flattened():
  """Dark ink on paper lit from one side (from 0.95 down to 0.45 of white): the same reading."""
  ramp = np.linspace(0.95, 0.45, 130)[None, :]
  photo = np.round(255 * ramp * (1 - 0.8 * string_image() / 255)).astype(np.uint8)
  assert read_number.read_number(photo, FakeRecogniser()) == read_number.read_number(string_image(),
                                                                                     FakeRecogniser())


def test_a_touching_pair_is_cut_where_the_recogniser_reads_two_digits():
  canvas = np.zeros((50, 80), np.uint8)
  ring(canvas, 10, 12)
  ring(canvas, 30, 12)  # touches the first one: one component 40 pixels wide
  assert read_number.cut_into_pieces(canvas).component.max() == 0  # a single component
  reading = read_number.read_number(canvas, FakeRecogniser())
  assert reading.text == "00"
  (x0, _, w0, _), (x1, _, w1, _) = (d.box for d in reading.digits)
  assert x0 == 10 and x1 + w1 == 50 and abs(x0 + w0 - 30) <= 2 and abs(x1 - 30) <= 2


def test_a_broken_digit_is_merged():
  """A 7 written as a T whose bar does not touch its stem (a gap of 2 pixels): one digit, not 1 and a bar."""
  canvas = np.zeros((50, 60), np.uint8)
  canvas[10:14, 15:35] = 255  # the bar
  canvas[16:38, 23:27] = 255  # the stem, 2 pixels below
  assert len(read_number.cut_into_pieces(canvas).boxes) == 2
  reading = read_number.read_number(canvas, FakeRecogniser())
  assert reading.text == "7"
  assert reading.digits[0].box == (15, 10, 20, 28)


class ReadsEverything:
  """A recogniser as sure of a fragment as of a digit (as the network, which was never taught to reject
  them): narrow ink is a 1, anything else a 0, doubtfully where it is wider than tall."""

  def __call__(self, images: np.ndarray) -> np.ndarray:
    answers = []
    for field in images[..., 0] > 128:
      rows, cols = np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0))
      aspect = (np.ptp(cols) + 1) / (np.ptp(rows) + 1)
      answer = _answer(1 if aspect < 0.45 else 0)
      answers.append(answer if aspect <= 0.9 else np.where(answer == SURE, 0.6, 0.4 / 9))
    return np.stack(answers)


def test_a_wide_single_digit_is_not_cut_into_confident_fragments():
  """One ring as wide as it is tall beside two narrow ones: its slices would read as confidently as it, so
  only the priors (a component no wider than a digit is rarely two) keep it whole."""
  canvas = np.zeros((50, 110), np.uint8)
  ring(canvas, 10, 12, width=14)
  ring(canvas, 34, 12, width=26)
  ring(canvas, 70, 12, width=14)
  assert read_number.read_number(canvas, ReadsEverything()).text == "000"
  no_priors = read_number.Priors(wide=0, low=0, merge=0, aspect=0, width=0, digit=0, cut=0, narrow_cut=0,
                                 crossing=0)
  assert len(read_number.read_number(canvas, ReadsEverything(), priors=no_priors).text) > 3


def test_a_touching_pair_is_cut_though_the_recogniser_reads_the_merge_confidently():
  canvas = np.zeros((50, 110), np.uint8)
  ring(canvas, 10, 12, width=18)
  ring(canvas, 28, 12, width=18)  # touching: one component 36 pixels wide, 1.4 digit heights
  ring(canvas, 60, 12, width=18)
  assert read_number.read_number(canvas, ReadsEverything()).text == "000"


def _path_total(segments, scores, boundaries, path) -> float:
  assert [segments[i][0] for i in path[1:]] == [segments[i][1] for i in path[:-1]]  # consecutive
  assert segments[path[0]][0] == 0 and segments[path[-1]][1] == len(boundaries) - 1  # covering
  return float(sum(scores[i] + boundaries[segments[i][1]] for i in path))


def test_the_best_path_of_each_length_is_never_better_than_the_free_one_and_equals_it_at_its_length():
  rng = np.random.default_rng(0)
  pieces = 7
  segments = [(a, b) for a in range(pieces) for b in range(a + 1, min(a + 3, pieces) + 1)]
  for _ in range(20):
    scores, boundaries = rng.normal(size=len(segments)), rng.normal(size=pieces + 1)
    free = read_number.best_path(segments, scores, boundaries)
    best = _path_total(segments, scores, boundaries, free)
    for length in range(3, pieces + 1):  # 7 pieces in runs of at most 3: 3 to 7 segments
      path = read_number.best_path(segments, scores, boundaries, length)
      assert len(path) == length
      assert _path_total(segments, scores, boundaries, path) <= best + 1e-12
    assert _path_total(segments, scores, boundaries,
                       read_number.best_path(segments, scores, boundaries, len(free))) == pytest.approx(best)


def test_a_known_length_splits_what_the_free_reading_merges_and_an_impossible_one_is_refused():
  canvas = np.zeros((50, 70), np.uint8)
  ring(canvas, 10, 12, width=12)
  ring(canvas, 22, 12, width=12)  # touching: one component, 0.92 digit heights wide

  def sure_of_zero(images: np.ndarray) -> np.ndarray:  # merges and halves alike
    return np.tile(_answer(0), (len(images), 1))

  free = read_number.read_number(canvas, sure_of_zero)
  assert free.text == "0"
  assert read_number.read_number(canvas, sure_of_zero, length=1) == free
  two = read_number.read_number(canvas, sure_of_zero, length=2)
  assert two.text == "00"
  (x0, _, w0, _), (x1, _, w1, _) = (d.box for d in two.digits)
  assert x0 == 10 and x1 + w1 == 34 and x0 + w0 <= x1 + 1  # side by side, covering the pair
  with pytest.raises(digit_image.ImageError, match="cannot be read as 50 digits"):
    read_number.read_number(canvas, sure_of_zero, length=50)


def test_too_many_pieces_are_refused_before_the_network_runs():
  """A hostile upload to POST /api/read: hundreds of thin strokes would make one enormous batch."""
  recogniser = FakeRecogniser()
  canvas = np.zeros((40, 4 * (read_number.MAX_PIECES + 10)), np.uint8)
  canvas[8:32, ::4] = 255
  with pytest.raises(digit_image.ImageError, match="too many pieces"):
    read_number.read_number(canvas, recogniser)
  canvas = np.zeros((40, 3 * read_number.MAX_PIECES), np.uint8)  # fewer strokes, closer: too many runs
  canvas[8:32, ::3] = 255
  with pytest.raises(digit_image.ImageError, match="too many candidate digits"):
    read_number.read_number(canvas, recogniser)
  assert not recogniser.batches


def test_one_batch_per_image():
  recogniser = FakeRecogniser()
  read_number.read_number(string_image(), recogniser)
  assert len(recogniser.batches) == 1 and recogniser.batches[0] >= 4


def test_an_unknown_glyph_is_uncertain():
  canvas = string_image()
  canvas[12:38, 110:122] = 255  # a filled block, narrow enough to be one digit: the fake has no opinion
  reading = read_number.read_number(canvas, FakeRecogniser())
  assert reading.uncertain and len(reading.text) == 5
  assert min(max(d.probabilities) for d in reading.digits) == pytest.approx(0.1)
  # The flag weighs the priors too (a block is no 0's shape): the weakest digit's score is at most its 0.1.
  weakest = read_number.choose_path(read_number.find_candidates(canvas, FakeRecogniser())).weakest
  assert 0 < weakest <= 0.1
  assert not read_number.read_number(canvas, FakeRecogniser(), uncertain_below=weakest / 2).uncertain


def test_json_holds_the_whole_reading():
  reading = read_number.read_number(string_image(), FakeRecogniser())
  record = json.loads(reading.to_json())
  assert record["text"] == "1010" and record["uncertain"] is False
  assert record["digits"][1]["box"] == [24, 12, 20, 26] and len(record["digits"][1]["probabilities"]) == 10


@pytest.mark.parametrize("value", [0, 255])
def test_a_blank_image_holds_no_number(value):
  with pytest.raises(digit_image.ImageError, match="no ink found"):
    read_number.read_number(np.full((40, 100), value, np.uint8), FakeRecogniser())


def test_reading_in_context_is_the_weighted_geometric_mean_of_the_two_readings():
  torn = np.full((1, 10), 0.02)
  torn[0, [3, 8]] = 0.42  # the digit network cannot tell a 3 from an 8
  says_eight = np.zeros((1, 10))
  says_eight[0, 8] = 3.0
  combined = read_number.read_in_context(torn, says_eight)
  assert combined.sum() == pytest.approx(1.0) and combined.argmax() == 8
  assert combined[0, 8] / combined[0, 3] == pytest.approx(np.exp(1.5))  # e^3 to the power 0.5
  assert np.allclose(read_number.read_in_context(torn, says_eight, weight=0.0), torn)
  no_opinion = read_number.read_in_context(torn, np.zeros((1, 10)))
  assert np.allclose(no_opinion, np.sqrt(torn) / np.sqrt(torn).sum())


def test_otsu_threshold_separates_two_levels():
  values = np.concatenate([np.full(900, 0.1), np.full(100, 0.8)])
  assert 0.1 <= read_number.otsu_threshold(values) < 0.8


# --- A trained network on real MNIST test digits -------------------------------------------------------


STRINGS, LENGTH = 50, 5


@pytest.fixture(scope="module")
def mnist_test(mnist_manual_dir):
  return varied_digits.read_mnist_test(str(mnist_manual_dir))


def test_strings_of_real_digits_apart_are_read(trained_run, mnist_test):
  """50 strings of 5 MNIST test digits, gaps of 2 to 6 pixels, per-digit scale and a wavy baseline.

  If segmentation were perfect, a string would be right with probability p^5, p the network's test
  accuracy (about 0.975 for this short run: p^5 about 0.88). The bound allows 0.15 below p^5: three
  binomial standard deviations over 50 strings (sqrt(0.88 * 0.12 / 50) = 0.046) for chance, and room for
  what preprocessing composed digits costs; a segmentation that split or merged digits even one string
  in five would fall below it."""
  workdir, final = trained_run
  probabilities_fn = read_number.predictor_probabilities(predict.load_predictor(str(workdir)))
  images, labels = mnist_test
  right = []
  for index in range(STRINGS):
    rng = np.random.default_rng([0, index])
    chosen = rng.integers(0, len(images), LENGTH)
    image, _ = number_strings.compose(images[chosen], (2, 6), rng)
    reading = read_number.read_number(image, probabilities_fn)
    right.append(reading.text == "".join(str(d) for d in labels[chosen]))
  bound = final["test_accuracy"] ** LENGTH - 0.15
  assert np.mean(right) >= bound, (np.mean(right), bound)


def test_predict_number_on_the_command_line(trained_run, mnist_test, tmp_path):
  """The command's --json reading of a composed paper-like string equals the Python API's."""
  workdir, _ = trained_run
  images, labels = mnist_test
  rng = np.random.default_rng([1, 0])
  image, _ = number_strings.compose(images[:6], (3, 5), rng)
  path = tmp_path / "number.png"
  Image.fromarray(number_strings.on_paper(image, rng)).save(path)
  result = subprocess.run([sys.executable, "-m", "alexnet_jax.predict", "--workdir", str(workdir), "--number",
                           "--json", str(path)], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  predictor = predict.load_predictor(str(workdir))
  probabilities_fn = read_number.predictor_probabilities(predictor)
  expected = read_number.read_number(digit_image.read_image(str(path)), probabilities_fn)
  assert printed["text"] == expected.text and len(printed["digits"]) == len(expected.digits)
  assert [d["box"] for d in printed["digits"]] == [list(d.box) for d in expected.digits]
  assert printed["confidence"] == pytest.approx(expected.confidence, rel=1e-5)
  command = [sys.executable, "-m", "alexnet_jax.predict", "--workdir", str(workdir), "--number", "--json"]
  result = subprocess.run([*command, "--length", "6", str(path)], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  six = read_number.read_number(digit_image.read_image(str(path)), probabilities_fn, length=6)
  assert json.loads(result.stdout.strip().splitlines()[-1])["text"] == six.text and len(six.text) == 6
