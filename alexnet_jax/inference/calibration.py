"""Temperature scaling (Guo et al., 2017): calibrated probabilities softmax(logits / T) from one scalar T.

Label smoothing trains the network to put 0.9 on the answer, so its raw probabilities are under-confident:
a clean, correctly read digit gets about 0.85. Dividing the logits by a temperature T < 1 fixes that
without changing any prediction (the argmax is the same for every T > 0), so accuracy is unchanged.

T is fit on the validation split after training, minimising its negative log-likelihood, and stored with
the run in DIR/calibration.json, one entry per checkpoint and weights ("ema@4296"): `evaluate`, `predict`,
`serve` and `export` apply the entry of the checkpoint they load. Test-time augmentation averages
probabilities over shifted views, which changes their confidence: its temperature is an entry of its own
("ema@4296+tta1"), fitted by `evaluate --tta_radius 1`. The test split is only reported on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

try:
  import fcntl
except ImportError:  # Windows
  fcntl = None
  import msvcrt

import numpy as np
import scipy.optimize
import scipy.special
from absl import logging

from alexnet_jax.analysis import classification_metrics
from alexnet_jax.training import metric_logging

CALIBRATION_FILE = "calibration.json"
# T outside this range means broken logits, not a calibration: the fit stops at the bounds.
TEMPERATURE_BOUNDS = (0.02, 50.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """softmax(logits / T) in float64 (the host-side reports' precision)."""
  return scipy.special.softmax(np.asarray(logits, np.float64) / temperature, axis=-1)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
  scaled = np.asarray(logits, np.float64) / temperature
  log_probabilities = scaled - scipy.special.logsumexp(scaled, axis=-1, keepdims=True)
  return float(-np.mean(log_probabilities[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """The T minimising the mean negative log-likelihood of softmax(logits / T).

  The NLL is convex in 1/T (a log-sum-exp of linear functions minus a linear one), so it has one
  minimum; scipy's bounded Brent search on log T finds it to 1e-7 relative.
  """
  result = scipy.optimize.minimize_scalar(
      lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)),
      bounds=tuple(math.log(b) for b in TEMPERATURE_BOUNDS), method="bounded", options={"xatol": 1e-7})
  return float(math.exp(result.x))


def summary(logits: np.ndarray, labels: np.ndarray, temperature: float, prefix: str) -> dict[str, float]:
  """NLL and ECE of a split before and after dividing its logits by `temperature`."""
  ece = classification_metrics.expected_calibration_error
  return {f"{prefix}_nll_before": negative_log_likelihood(logits, labels),
          f"{prefix}_nll_after": negative_log_likelihood(logits, labels, temperature),
          f"{prefix}_ece_before": ece(softmax(logits), labels),
          f"{prefix}_ece_after": ece(softmax(logits, temperature), labels)}


def entry_key(weights: str, step: int, tta_radius: int = 0) -> str:
  """"ema@4296"; with test-time augmentation (inference/test_time_augmentation.py) "ema@4296+tta1"."""
  return f"{weights}@{step}" + (f"+tta{tta_radius}" if tta_radius else "")


def read_entry_file(path: str) -> dict[str, dict[str, Any]]:
  """The entries of a file of keyed entries (calibration.json, number_reader.json); ValueError or OSError
  if it cannot be read as such."""
  with open(path) as f:
    entries = json.load(f)
  if not isinstance(entries, dict):
    raise ValueError(f"a JSON {type(entries).__name__}, not an object of entries")
  return entries


def read_entries(workdir: str) -> dict[str, dict[str, Any]]:
  """Every stored entry ({} if there is no file). A damaged file reads as empty, with a warning: its
  temperatures are fitted again where needed, and the next store moves the damaged file aside."""
  path = os.path.join(workdir, CALIBRATION_FILE)
  if not os.path.exists(path):
    return {}
  try:
    return read_entry_file(path)
  except (OSError, ValueError) as e:
    logging.warning("%s cannot be read (%s: %s): probabilities uncalibrated until a temperature is fitted "
                    "again", path, type(e).__name__, e)
    return {}


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
  """Holds an exclusive lock on `path` + ".lock" (two `evaluate` runs storing at once: one waits)."""
  with open(path + ".lock", "a+") as handle:
    if fcntl is not None:
      fcntl.flock(handle, fcntl.LOCK_EX)
    else:  # Windows
      msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
    try:
      yield
    finally:
      if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
      else:
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


def store_entry(path: str, key: str, entry: dict[str, Any]) -> None:
  """Adds one entry to a file of keyed entries: read, changed and renamed into place under the lock, so
  that concurrent writers lose no entry and a kill never leaves half a file. A damaged file is moved aside
  first, never lost."""
  with _exclusive(path):
    entries = {}
    if os.path.exists(path):
      try:
        entries = read_entry_file(path)
      except (OSError, ValueError) as e:
        kept = f"{path}.damaged-{int(time.time())}"
        os.replace(path, kept)
        logging.warning("%s was damaged (%s: %s); moved it to %s and starting it again", path,
                        type(e).__name__, e, kept)
    entries[key] = entry
    metric_logging.write_atomically(path, json.dumps(entries, indent=2, sort_keys=True))


def stored_temperature(workdir: str, weights: str, step: int, tta_radius: int = 0) -> float | None:
  entry = read_entries(workdir).get(entry_key(weights, step, tta_radius))
  return None if entry is None else float(entry["temperature"])


def calibrate(workdir: str, weights: str, step: int, validation: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray] | None = None, *, tta_radius: int = 0,
              store: bool = True) -> dict[str, Any]:
  """Fits T on the validation (logits, labels), stores it (unless `store` is False) for (weights, step,
  tta_radius) in DIR/calibration.json beside the other checkpoints' entries, and returns the entry (with
  the test split's figures if given, for the report only)."""
  temperature = fit_temperature(*validation)
  entry = {"temperature": temperature, "weights": weights, "checkpoint_step": step,
           "fit_on": "validation", **summary(*validation, temperature, "val")}
  if test is not None:
    entry.update(summary(*test, temperature, "test"))
  if tta_radius:
    entry["tta_radius"] = tta_radius
  if not store:
    return entry
  store_entry(os.path.join(workdir, CALIBRATION_FILE), entry_key(weights, step, tta_radius), entry)
  return entry
