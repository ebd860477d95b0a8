"""context_verifier: the windows it sees, training (learns, and the same seed gives the same bits),
storage, the number reader that reads it (for_predictor, with and without it stored), and the commands end
to end on a real run."""

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax.inference import context_verifier, digit_image, number_reader, predict, read_number
from experiments import train_context_verifier
from tests.conftest import REPO_ROOT
from tests.test_number_reader import FakePredictor, SureOfEverything, touching_pair
from tests.test_read_number import ring

ROWS, COLS = context_verifier.ROWS, context_verifier.COLS


def two_rings() -> np.ndarray:
  """Two narrow rings (never cut), 40 px (1.5 digit heights) apart: each within the other's window."""
  canvas = np.zeros((60, 100), np.uint8)
  ring(canvas, 20, 15, width=12)
  ring(canvas, 60, 15, width=12)
  return canvas


def test_a_window_is_centred_on_its_candidate_and_its_second_channel_holds_only_its_own_ink():
  pieces = read_number.cut_into_pieces(two_rings())
  assert len(pieces.boxes) == 2
  views = context_verifier.context_views(pieces, np.array([[0, 1], [1, 2], [0, 2]])).astype(np.float32)
  assert views.shape == (3, ROWS, COLS, 2)
  assert np.all(views[..., 1] <= views[..., 0])
  for view in views[:2]:  # one ring each: its ink is the window's middle, and the other ring lies aside
    own = view[..., 1]
    centre = np.average(np.arange(COLS), weights=own.sum(axis=0))
    assert abs(centre - (COLS - 1) / 2) < 1.0
    assert (view[..., 0] - own).sum() > 0  # the neighbouring ring, seen but not the candidate's
  assert np.array_equal(views[2, ..., 1], views[2, ..., 0])  # both rings: all the ink is the candidate's


def toy_views(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Noise, with the candidate's channel lit in the left half (whole) or the right half (not), and for a
  whole one the digit d a band of rows 2d..2d+1 lit in the other channel."""
  rng = np.random.default_rng(seed)
  views = rng.uniform(0, 0.3, (count, ROWS, COLS, 2)).astype(np.float32)
  whole = rng.random(count) < 0.5
  digits = np.where(whole, rng.integers(0, 10, count), -1)
  views[whole, :, :COLS // 2, 1] += 0.7
  views[~whole, :, COLS // 2:, 1] += 0.7
  for index in np.flatnonzero(whole):
    views[index, 2 * digits[index]:2 * digits[index] + 2, :, 0] += 0.7
  return views, digits


def test_training_learns_both_tasks_and_the_same_seed_gives_the_same_bits():
  views, digits = toy_views(2048, 0)
  settings = context_verifier.TrainingSettings(epochs=3, seed=3)
  params = context_verifier.train(views, digits, settings, log=lambda _: None)
  held_views, held_digits = toy_views(512, 1)
  outputs = context_verifier.logits_fn(params)(held_views)
  assert outputs.shape == (512, 1 + context_verifier.DIGITS)
  p = 1 / (1 + np.exp(-outputs[:, 0]))
  assert number_reader.held_out_figures_of(p, held_digits >= 0)["accuracy"] > 0.95
  whole = held_digits >= 0
  assert np.mean(outputs[whole, 1:].argmax(axis=1) == held_digits[whole]) > 0.9
  again = context_verifier.train(views, digits, settings, log=lambda _: None)
  other = context_verifier.train(views, digits, context_verifier.TrainingSettings(epochs=3, seed=4),
                                 log=lambda _: None)
  leaves = [np.asarray(x) for x in _leaves(params)]
  assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(leaves, _leaves(again), strict=True))
  assert not all(np.array_equal(a, np.asarray(b)) for a, b in zip(leaves, _leaves(other), strict=True))


def _leaves(params):
  import jax  # noqa: PLC0415

  return jax.tree_util.tree_leaves(params)


def test_the_loss_reads_the_digit_of_whole_candidates_only():
  outputs = np.zeros((2, 1 + context_verifier.DIGITS), np.float32)
  outputs[:, 1 + 3] = 5.0  # both read as a 3
  sure_three = float(context_verifier.loss(outputs, np.array([3, -1])))
  sure_wrong = float(context_verifier.loss(outputs, np.array([4, -1])))
  fragment = float(context_verifier.loss(outputs, np.array([-1, -1])))
  assert sure_wrong - sure_three == pytest.approx(5.0 / 2, rel=1e-5)  # 5 nats more, on 1 of 2 candidates
  assert fragment == pytest.approx(np.log(2.0), rel=1e-5)  # logit 0: log 2 each, and no digit read


def test_fewer_candidates_than_a_batch_are_refused():
  views, digits = toy_views(10, 0)
  with pytest.raises(ValueError, match="fewer than one batch"):
    context_verifier.train(views, digits)


def untrained(seed: int = 0) -> dict:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  return context_verifier.ContextNet().init(jax.random.key(seed), jnp.zeros((1, ROWS, COLS, 2)))


def test_storage_round_trips_and_a_missing_or_damaged_one_is_named(tmp_path):
  with pytest.raises(ValueError, match="no context verifier stored"):
    context_verifier.load(str(tmp_path))
  params = untrained()
  context_verifier.save(str(tmp_path), params)
  loaded = context_verifier.load(str(tmp_path))
  assert all(np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(_leaves(params), _leaves(loaded), strict=True))
  for path in (tmp_path / context_verifier.CHECKPOINT_DIR).rglob("*"):
    if path.is_file():
      path.write_bytes(b"damaged")
  with pytest.raises(ValueError, match="cannot be read") as caught:
    context_verifier.load(str(tmp_path))
  assert "\n" not in str(caught.value)


def test_one_stored_before_the_digit_head_is_refused_in_one_line_that_says_to_train_it_again(tmp_path):
  params = untrained()
  last = params["params"]["Dense_1"]
  params["params"]["Dense_1"] = {"kernel": last["kernel"][:, :1], "bias": last["bias"][:1]}  # 1 output
  context_verifier.save(str(tmp_path), params)
  with pytest.raises(ValueError, match="of another shape; train it again") as caught:
    context_verifier.load(str(tmp_path))
  assert "\n" not in str(caught.value)


def context_reader(slope: float = 1.0) -> number_reader.NumberReader:
  """A verifier that reads the context logit alone, as P(whole) = sigmoid(slope * logit)."""
  return number_reader.NumberReader(np.zeros(1), np.ones(1), np.array([slope]), 0.0, context=True)


def test_a_reader_fitted_on_the_context_verifier_reads_with_the_stored_one(tmp_path):
  number_reader.store(str(tmp_path), "ema", 7, context_reader())
  assert number_reader.load(str(tmp_path), "ema", 7).context
  params = untrained(1)
  context_verifier.save(str(tmp_path), params)
  probabilities_fn, options = number_reader.for_predictor(FakePredictor(str(tmp_path)))
  canvas, _ = touching_pair()
  candidates = read_number.find_candidates(canvas, probabilities_fn, options["context_fn"])
  outputs = context_verifier.logits_fn(params)(context_verifier.context_views(candidates.pieces,
                                                                              candidates.segments))
  expected = outputs[:, 0]
  assert np.array_equal(candidates.context, expected) and candidates.features is None
  network = read_number.find_candidates(canvas, probabilities_fn).probabilities
  cuts = read_number.component_cuts(candidates.pieces)
  cut = cuts[candidates.segments[:, 0]] | cuts[candidates.segments[:, 1]]
  assert cut.any() and not cut.all()  # the pair is one component, cut; the whole pair is not
  assert np.array_equal(candidates.probabilities[~cut], network[~cut])  # read by the digit network alone
  assert np.array_equal(candidates.probabilities[cut],
                        read_number.read_in_context(network[cut], outputs[cut, 1:]))
  assert np.array_equal(number_reader.inputs(candidates), expected[:, None])
  assert np.array_equal(context_reader().log_whole(candidates), -np.logaddexp(0.0, -expected))
  reading = read_number.read_number(canvas, probabilities_fn, **options)
  path = read_number.choose_path(candidates, options["priors"], context_reader())
  assert reading.text == read_number.path_text(candidates, path)


def test_the_context_logit_decides_between_a_merge_and_its_two_halves():
  """With the network sure of every candidate, the verifier's judgement alone picks the path: a context
  logit that is high for the widest candidate reads one digit, one that is low for it reads two."""
  canvas, _ = touching_pair()
  for sign, expected in ((1.0, "0"), (-1.0, "00")):
    def widest_is_whole(pieces, segments, sign=sign):
      widths = np.array([pieces.boxes[b - 1, 2] - pieces.boxes[a, 0] for a, b in segments])
      logits = np.where(widths == widths.max(), 20.0 * sign, -20.0 * sign * (widths < 20)) + 0.0
      return np.column_stack([logits, np.zeros((len(logits), 10))])  # reading no digit in particular

    reading = read_number.read_number(canvas, SureOfEverything(), verifier=context_reader(),
                                      context_fn=widest_is_whole)
    assert reading.text == expected


def test_without_the_context_verifier_it_was_fitted_on_the_reader_falls_back_in_one_line(tmp_path, caplog):
  number_reader.store(str(tmp_path), "ema", 7, context_reader())
  with caplog.at_level(logging.WARNING):
    _, options = number_reader.for_predictor(FakePredictor(str(tmp_path)))
  assert options == {}
  assert any("no context verifier stored" in r.getMessage() and "\n" not in r.getMessage()
             for r in caplog.records)


def test_a_context_reader_refuses_candidates_without_the_context_logit():
  canvas, _ = touching_pair()
  with pytest.raises(ValueError, match="fitted for another network"):
    read_number.read_number(canvas, SureOfEverything(), verifier=context_reader())


def rings_as_digits(count: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """MNIST-sized 'digits' (rings of a few widths) for composing strings without MNIST."""
  images = np.zeros((count, 28, 28), np.uint8)
  for i in range(count):
    ring(images[i], 5 + i % 4, 3, width=12 + i % 5, height=20)
  return images, np.arange(count) % 10


def test_every_digit_of_a_wide_string_has_a_whole_candidate_and_a_merge_of_two_is_not_one():
  images, labels = rings_as_digits()
  views, digits, index_of = train_context_verifier.labelled_views(images, labels, count=8, seed=0)
  whole = digits >= 0
  assert views.shape == (len(whole), ROWS, COLS, 2) and views.dtype == np.float16
  assert set(index_of) == set(range(8))
  for index in range(0, 8, 4):  # strings 0 and 4 are wide: every digit a component of its own
    spacing, _ = train_context_verifier.number_strings.kind_of(index, paper=True)
    assert spacing == "wide"
    rng = np.random.default_rng([0, index, train_context_verifier.TRAINING_STREAM])
    _, truth, _ = train_context_verifier.number_strings.make_string(images, labels, rng, "wide", "black")
    assert whole[index_of == index].sum() >= len(truth)
    assert set(digits[(index_of == index) & whole]) == {int(d) for d in truth}  # each read as its own
  assert 0 < whole.mean() < 0.5


def run_module(module: str, *args: str) -> str:
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_train_it_fit_the_reader_on_it_and_read_with_both_on_real_digits(smoke_run, tmp_path):
  """The commands end to end on a copy of a real run: train the context verifier on strings of its
  training digits, fit the number reader on top of it on validation strings, and `predict --number` reads
  with both exactly as the Python API does."""
  workdir = tmp_path / "run"
  shutil.copytree(smoke_run, workdir)
  printed = run_module("experiments.train_context_verifier", "--workdir", str(workdir), "--count", "30",
                       "--epochs", "1")
  assert "held-out strings" in printed and context_verifier.exists(str(workdir))
  run_module("experiments.number_strings", "--workdir", str(workdir), "--fit_verifier", "--count", "20",
             "--min_length", "5", "--max_length", "5", "--out", str(tmp_path / "strings"))
  assert json.loads((tmp_path / "strings" / "results.json").read_text())["context"] is True
  predictor = predict.load_predictor(str(workdir))
  assert number_reader.load(str(workdir), predictor.weights, predictor.checkpoint_step).context
  image = two_rings()
  path = tmp_path / "number.png"
  Image.fromarray(image).save(path)
  reading = json.loads(run_module("alexnet_jax.predict", "--workdir", str(workdir), "--number", "--json",
                                  str(path)).strip().splitlines()[-1])
  probabilities_fn, options = number_reader.for_predictor(predictor)
  assert "context_fn" in options
  expected = read_number.read_number(digit_image.read_image(str(path)), probabilities_fn, **options)
  assert reading["text"] == expected.text and reading["uncertain"] == expected.uncertain
