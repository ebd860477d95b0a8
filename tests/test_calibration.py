"""Temperature scaling: the fit, what it changes and what it leaves alone, and its file."""

import concurrent.futures
import json
import logging
import threading

import numpy as np
import pytest

from alexnet_jax.analysis import classification_metrics
from alexnet_jax.inference import calibration


def _overconfident(n: int, true_temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Logits whose labels are drawn from softmax(logits / true_temperature): the true T is known."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0.0, 3.0, (n, 10))
  probabilities = calibration.softmax(logits, true_temperature)
  labels = (probabilities.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
  return logits, np.minimum(labels, 9)


def test_fit_recovers_the_temperature_the_labels_were_drawn_with():
  # 50,000 draws: the maximum-likelihood T's standard error is well under 1% here.
  logits, labels = _overconfident(50_000, true_temperature=2.0)
  assert calibration.fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.03)


def test_fitted_temperature_minimises_the_validation_likelihood_and_keeps_every_prediction():
  logits, labels = _overconfident(5_000, true_temperature=0.5, seed=1)
  t = calibration.fit_temperature(logits, labels)
  nll = calibration.negative_log_likelihood
  assert nll(logits, labels, t) < nll(logits, labels)
  for nearby in (t * 0.99, t * 1.01):
    assert nll(logits, labels, t) <= nll(logits, labels, nearby)
  np.testing.assert_array_equal(calibration.softmax(logits, t).argmax(1), logits.argmax(1))


def test_calibration_lowers_the_error_of_under_confident_probabilities():
  """Smoothed-label networks are under-confident: their logits are too small. T < 1 restores them."""
  logits, labels = _overconfident(20_000, true_temperature=1.0, seed=2)
  shrunk = logits * 0.4  # what label smoothing does, roughly
  ece = classification_metrics.expected_calibration_error
  t = calibration.fit_temperature(shrunk, labels)
  assert t == pytest.approx(0.4, rel=0.05)
  assert ece(calibration.softmax(shrunk, t), labels) < 0.5 * ece(calibration.softmax(shrunk), labels)


def test_entries_are_kept_per_checkpoint_and_weights(tmp_path):
  logits, labels = _overconfident(2_000, true_temperature=0.7, seed=3)
  first = calibration.calibrate(str(tmp_path), "ema", 100, (logits, labels), (logits[:500], labels[:500]))
  calibration.calibrate(str(tmp_path), "raw", 100, (logits * 2, labels))
  assert calibration.stored_temperature(str(tmp_path), "ema", 100) == first["temperature"]
  assert calibration.stored_temperature(str(tmp_path), "raw", 100) == pytest.approx(
      2 * first["temperature"], rel=1e-4)
  assert calibration.stored_temperature(str(tmp_path), "ema", 200) is None
  saved = json.loads((tmp_path / calibration.CALIBRATION_FILE).read_text())
  assert set(saved) == {"ema@100", "raw@100"}
  assert {"val_ece_before", "val_ece_after", "test_ece_before", "test_ece_after"} <= set(saved["ema@100"])
  assert saved["ema@100"]["fit_on"] == "validation"


def test_a_damaged_file_is_said_refitted_and_kept_aside(tmp_path, caplog):
  """A damaged calibration.json reads as empty with a warning (not silently), and the next store moves it
  aside (its bytes kept) instead of writing over it."""
  (tmp_path / calibration.CALIBRATION_FILE).write_text("{not json")
  with caplog.at_level(logging.WARNING):
    assert calibration.stored_temperature(str(tmp_path), "raw", 1) is None
  assert any("calibration.json cannot be read" in r.getMessage() for r in caplog.records)
  logits, labels = _overconfident(1_000, true_temperature=1.0, seed=4)
  calibration.calibrate(str(tmp_path), "raw", 1, (logits, labels))
  assert calibration.stored_temperature(str(tmp_path), "raw", 1) is not None
  kept = list(tmp_path.glob(calibration.CALIBRATION_FILE + ".damaged-*"))
  assert len(kept) == 1 and kept[0].read_text() == "{not json"


def test_concurrent_writers_lose_no_entry(tmp_path):
  """Several `evaluate` runs storing temperatures at once (threads here: each opens the file anew, as
  processes do): every entry is kept, and no temporary file is left behind."""
  logits, labels = _overconfident(200, true_temperature=1.0, seed=5)
  entry = calibration.calibrate(str(tmp_path), "raw", 0, (logits, labels), store=False)
  workers, per_worker = 4, 25
  barrier = threading.Barrier(workers)

  def store(worker):
    barrier.wait()
    path = str(tmp_path / calibration.CALIBRATION_FILE)
    for i in range(per_worker):
      calibration.store_entry(path, calibration.entry_key("raw", worker * per_worker + i), entry)

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    list(pool.map(store, range(workers)))
  saved = json.loads((tmp_path / calibration.CALIBRATION_FILE).read_text())
  assert len(saved) == workers * per_worker
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
