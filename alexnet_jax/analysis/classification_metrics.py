"""Classification metrics from labels and predicted probabilities, for evaluation reports.

Plain numpy on the host: these run once per evaluation over at most a few tens of thousands of examples,
and keeping them free of JAX makes them easy to check against an independent computation.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
  return counts


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support per class; 0 where a ratio has no denominator."""
  true_positives = np.diag(confusion).astype(np.float64)
  predicted = confusion.sum(axis=0)
  support = confusion.sum(axis=1)
  precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives),
                        where=predicted > 0)
  recall = np.divide(true_positives, support, out=np.zeros_like(true_positives), where=support > 0)
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positives),
                 where=denominator > 0)
  return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def most_confused_pairs(confusion: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
  """(true, predicted, count) of the largest off-diagonal cells, largest first; ties by class."""
  off_diagonal = [(int(t), int(p), int(confusion[t, p])) for t in range(confusion.shape[0])
                  for p in range(confusion.shape[1]) if t != p and confusion[t, p] > 0]
  return sorted(off_diagonal, key=lambda cell: (-cell[2], cell[0], cell[1]))[:top]


def calibration_bins(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15
                     ) -> list[dict[str, float]]:
  """Per equal-width bin of top-label confidence, in order, empty bins left out: mean confidence, accuracy
  and the share of the examples in it. Bin i holds confidences in (i / n, (i + 1) / n]; a confidence of
  exactly 0 joins the first bin."""
  confidence = probabilities.max(axis=1)
  correct = probabilities.argmax(axis=1) == labels
  bins = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
  return [{"confidence": float(confidence[bins == b].mean()), "accuracy": float(correct[bins == b].mean()),
           "share": float(np.mean(bins == b))} for b in range(num_bins) if np.any(bins == b)]


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15
                               ) -> float:
  """Top-label ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| x share."""
  return float(sum(abs(b["accuracy"] - b["confidence"]) * b["share"]
                   for b in calibration_bins(probabilities, labels, num_bins)))


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
  """Mean negative log-probability of the true class (a probability of 0 counts as the smallest float)."""
  eps = np.finfo(np.float64).tiny
  return float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], eps))))


def classification_report(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """Every number an evaluation report shows, JSON-ready."""
  num_classes = probabilities.shape[1]
  predictions = probabilities.argmax(axis=1)
  confusion = confusion_matrix(labels, predictions, num_classes)
  scores = per_class_scores(confusion)
  loss = log_loss(probabilities, labels)
  return {
      "count": int(len(labels)),
      "accuracy": float(np.mean(predictions == labels)),
      "loss": loss,
      "per_class": {name: values.tolist() for name, values in scores.items()},
      "macro": {name: float(np.mean(scores[name])) for name in ("precision", "recall", "f1")},
      "confusion_matrix": confusion.tolist(),
      "most_confused": [{"true": t, "predicted": p, "count": c}
                        for t, p, c in most_confused_pairs(confusion)],
      "expected_calibration_error": expected_calibration_error(probabilities, labels),
  }
