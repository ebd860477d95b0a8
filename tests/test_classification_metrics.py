"""Metric functions against hand-worked values and an independent brute-force computation."""

import numpy as np
import pytest

from alexnet_jax.analysis import classification_metrics as cm


def _one_hot_probabilities(predictions, confidences, num_classes):
  """Rows whose argmax is `predictions` with top probability `confidences`."""
  probabilities = np.zeros((len(predictions), num_classes))
  for row, (p, c) in enumerate(zip(predictions, confidences, strict=True)):
    probabilities[row] = (1 - c) / (num_classes - 1)
    probabilities[row, p] = c
  return probabilities


def test_small_confusion_case_worked_by_hand():
  labels = np.array([0, 0, 0, 1, 1, 2])
  predictions = np.array([0, 0, 1, 1, 2, 2])
  confusion = cm.confusion_matrix(labels, predictions, 3)
  assert confusion.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  scores = cm.per_class_scores(confusion)
  np.testing.assert_allclose(scores["precision"], [1.0, 0.5, 0.5])
  np.testing.assert_allclose(scores["recall"], [2 / 3, 0.5, 1.0])
  np.testing.assert_allclose(scores["f1"], [0.8, 0.5, 2 / 3])
  assert scores["support"].tolist() == [3, 2, 1]
  assert cm.most_confused_pairs(confusion) == [(0, 1, 1), (1, 2, 1)]


def test_against_brute_force_on_random_predictions():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 2000)
  predictions = np.where(rng.random(2000) < 0.7, labels, rng.integers(0, 10, 2000))
  probabilities = _one_hot_probabilities(predictions, rng.uniform(0.2, 1.0, 2000), 10)
  report = cm.classification_report(probabilities, labels)
  for k in range(10):
    tp = sum(1 for y, p in zip(labels, predictions, strict=True) if y == k and p == k)
    fp = sum(1 for y, p in zip(labels, predictions, strict=True) if y != k and p == k)
    fn = sum(1 for y, p in zip(labels, predictions, strict=True) if y == k and p != k)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert report["per_class"]["precision"][k] == pytest.approx(precision)
    assert report["per_class"]["recall"][k] == pytest.approx(recall)
    assert report["per_class"]["f1"][k] == pytest.approx(2 * precision * recall / (precision + recall))
    assert report["per_class"]["support"][k] == tp + fn
  assert report["accuracy"] == pytest.approx(np.mean(labels == predictions))
  assert report["count"] == 2000 and np.sum(report["confusion_matrix"]) == 2000
  expected_loss = -np.mean([np.log(probabilities[i, y]) for i, y in enumerate(labels)])
  assert report["loss"] == pytest.approx(expected_loss)
  assert report["macro"]["f1"] == pytest.approx(np.mean(report["per_class"]["f1"]))


def test_expected_calibration_error_by_hand():
  # Two examples at confidence 0.9 (one right): |0.5 - 0.9| x 1/2; two at 0.6 (both right): 0.4 x 1/2.
  probabilities = _one_hot_probabilities([0, 1, 2, 3], [0.9, 0.9, 0.6, 0.6], 4)
  labels = np.array([0, 0, 2, 3])
  assert cm.expected_calibration_error(probabilities, labels, num_bins=10) == pytest.approx(0.4)
  perfect = _one_hot_probabilities([0, 1], [1.0, 1.0], 4)
  assert cm.expected_calibration_error(perfect, np.array([0, 1])) == pytest.approx(0.0)


def test_classes_never_predicted_score_zero_not_nan():
  confusion = cm.confusion_matrix(np.array([0, 1]), np.array([0, 0]), 3)
  scores = cm.per_class_scores(confusion)
  assert scores["precision"].tolist() == [0.5, 0.0, 0.0]
  assert not np.isnan(scores["f1"]).any()
