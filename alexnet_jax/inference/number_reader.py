"""A trained run's number reader: the "is this candidate one whole digit?" verifier that `read_number` adds
to its path score, with the priors and the uncertainty threshold fitted beside it.

The network reads a fragment of a digit, or two overlapping digits merged, as confidently as a digit (it
was never taught to reject them: LeCun et al. 1998 trained theirs with a "not a digit" class), and the
geometric priors cannot tell "36" merged from an 8. Its penultimate layer can: an L2-regularised logistic
regression of [penultimate features, the candidate's shape] -> P(one whole digit) is fitted on the
candidates of strings composed from **validation** digits, each labelled by the true digits' boxes
(`whole_labels`). Each candidate then scores log p(class) + log P(whole) - priors, and the weakest digit's
score flags a reading as uncertain.

Where the run has a context verifier (context_verifier.py: a small CNN that sees each candidate among its
neighbours), the logistic regression reads its logit alone instead (recalibrating it on validation
strings), and the priors are fitted on top of that: it reads strings better than the features do.

The verifier depends on the network, so, like the calibration temperature (calibration.py), it is stored
with the run: DIR/number_reader.json, one entry per checkpoint and weights ("ema@4296"), written under a
lock and renamed into place. `python -m experiments.number_strings --workdir RUN --fit_verifier` fits and
stores it; `predict --number` and `serve`'s /api/read load it (`for_predictor`), and without one read with
`read_number.PRIORS` alone, saying so in one line.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import scipy.optimize
from absl import logging

from alexnet_jax.inference import calibration, context_verifier, read_number

READER_FILE = "number_reader.json"
WHOLE_IOU = 0.8  # a candidate is one whole digit when its box overlaps one true digit's this much
BOX_SLACK = 1  # px: the binarised ink's box edges lie about this close to those of all non-zero pixels
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # per-example weight of 0.5 * |w|^2, chosen on held-out strings
MAX_ITERATIONS = 300
# The candidate's shape beside its features (sizes in digit heights): what the priors weigh, and more.
GEOMETRY = ("width", "tall", "log_aspect", "side_by_side", "aspect_z", "width_z", "pieces", "components",
            "cut_left", "cut_right", "crossings_left", "crossings_right", "cut_width_left",
            "cut_width_right", "log_top", "log_second")


def geometry(candidates: read_number.Candidates) -> np.ndarray:
  """(m, len(GEOMETRY)): each candidate's shape, its cuts and the network's two largest probabilities."""
  c = candidates
  first, stop = c.segments[:, 0], c.segments[:, 1]
  components = [len(np.unique(c.pieces.component[a:b])) for a, b in c.segments]
  top_two = np.sort(c.probabilities, axis=1)[:, -2:]
  return np.column_stack([
      c.width, c.tall, np.log(c.width / c.tall), c.side_by_side, c.aspect_z, c.width_z, stop - first,
      components, c.cut[first], c.cut[stop], c.crossings[first], c.crossings[stop],
      c.cut_width[first] * c.cut[first], c.cut_width[stop] * c.cut[stop],
      np.log(np.maximum(top_two[:, 1], 1e-30)), np.log(np.maximum(top_two[:, 0], 1e-30))]).astype(np.float64)


def inputs(candidates: read_number.Candidates) -> np.ndarray:
  """What the verifier reads of each candidate: the context verifier's logit alone (m, 1) where the
  candidates carry one, else (m, width + len(GEOMETRY)) the penultimate features and the shape. (With the
  context verifier, the features and shape beside its logit made the readings worse: the results log,
  "The context verifier".)"""
  if candidates.context is not None:
    return candidates.context[:, None].astype(np.float64)
  if candidates.features is None:
    raise ValueError("the candidates carry no penultimate features: find them with "
                     "read_number.predictor_probabilities(predictor, features=True)")
  return np.concatenate([candidates.features.astype(np.float64), geometry(candidates)], axis=1)


def whole_labels(boxes: np.ndarray, true_boxes: np.ndarray) -> np.ndarray:
  """(m,) bool: whether each candidate is one whole digit (`matched_digits`)."""
  return matched_digits(boxes, true_boxes) >= 0


def matched_digits(boxes: np.ndarray, true_boxes: np.ndarray) -> np.ndarray:
  """(m,) int: which true digit each candidate box (x0, y0, x1, y1; `Candidates.boxes`) is, or -1 for a
  fragment or a merge. A candidate is true digit k when its box is k's box ([x, y, w, h]; IoU at least
  WHOLE_IOU once each of its edges is moved up to BOX_SLACK toward k's) and holds no other digit's centre."""
  truth = np.asarray(true_boxes, np.float64).reshape(-1, 4)
  true_edges = np.stack([truth[:, 0], truth[:, 1], truth[:, 0] + truth[:, 2], truth[:, 1] + truth[:, 3]], 1)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  # (m, digits, 4): the binarised ink's edges lie within a pixel or so of those of all its non-zero pixels,
  # inside or (where a halo pixel is binarised) on them; a fixed widening would fail a box that is exact.
  edges = boxes[:, None, :] + np.clip(true_edges[None] - boxes[:, None, :], -BOX_SLACK, BOX_SLACK)
  x0, y0, x1, y1 = np.moveaxis(edges, -1, 0)
  tx0, ty0, tx1, ty1 = true_edges.T
  overlap = np.clip(np.minimum(x1, tx1) - np.maximum(x0, tx0), 0, None) * np.clip(
      np.minimum(y1, ty1) - np.maximum(y0, ty0), 0, None)
  union = (x1 - x0) * (y1 - y0) + (tx1 - tx0) * (ty1 - ty0) - overlap
  iou = overlap / union
  cx, cy = (tx0 + tx1) / 2, (ty0 + ty1) / 2
  bx0, by0, bx1, by1 = (boxes + [-BOX_SLACK, -BOX_SLACK, BOX_SLACK, BOX_SLACK]).T[..., None]
  holds = (bx0 <= cx) & (cx < bx1) & (by0 <= cy) & (cy < by1)  # (m, digits): whose centres each box holds
  matched = iou >= WHOLE_IOU
  whole = (matched.sum(axis=1) == 1) & (holds.sum(axis=1) == 1) & (matched & holds).any(axis=1)
  return np.where(whole, matched.argmax(axis=1), -1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
  """Weights and bias minimising the mean log-loss of sigmoid(x @ w + b) + l2 / 2 * |w|^2 (L-BFGS; `x`
  standardised, so that one l2 suits every feature)."""
  targets = y.astype(np.float64)

  def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
    logits = x @ theta[:-1] + theta[-1]
    loss = np.mean(np.logaddexp(0.0, logits) - targets * logits) + 0.5 * l2 * theta[:-1] @ theta[:-1]
    error = (_sigmoid(logits) - targets) / len(targets)
    return float(loss), np.concatenate([x.T @ error + l2 * theta[:-1], [error.sum()]])

  result = scipy.optimize.minimize(loss_and_gradient, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                                   options={"maxiter": MAX_ITERATIONS})
  return result.x[:-1], float(result.x[-1])


def _sigmoid(logits: np.ndarray) -> np.ndarray:
  return np.exp(-np.logaddexp(0.0, -logits))


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
  p = np.clip(probabilities, 1e-12, 1 - 1e-12)
  return float(-np.mean(np.where(y, np.log(p), np.log(1 - p))))


@dataclasses.dataclass(frozen=True)
class NumberReader:
  """The verifier (standardisation `mean`, `scale`; logistic `weights`, `bias`), and the priors and the
  uncertainty threshold fitted with it: `options()` is what `read_number.read_number` takes."""

  mean: np.ndarray
  scale: np.ndarray
  weights: np.ndarray
  bias: float
  priors: read_number.Priors = read_number.PRIORS
  uncertain_below: float = read_number.UNCERTAIN_BELOW
  context: bool = False  # whether it reads the context verifier's logit (RUN/context_verifier), not features

  def log_whole(self, candidates: read_number.Candidates) -> np.ndarray:
    """(m,): log P(each candidate is one whole digit)."""
    return self.log_whole_of(inputs(candidates))

  def log_whole_of(self, x: np.ndarray) -> np.ndarray:
    """(m,): log P(whole) of inputs already assembled (`inputs`)."""
    if x.shape[1] != len(self.weights):
      raise ValueError(f"the verifier reads {len(self.weights)} inputs, the candidates have {x.shape[1]}: "
                       "fitted for another network?")
    return -np.logaddexp(0.0, -(((x - self.mean) / self.scale) @ self.weights + self.bias))

  def options(self) -> dict[str, Any]:
    return {"priors": self.priors, "verifier": self, "uncertain_below": self.uncertain_below}

  def to_entry(self) -> dict[str, Any]:
    return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "weights": self.weights.tolist(),
            "bias": self.bias, "priors": dataclasses.asdict(self.priors),
            "uncertain_below": self.uncertain_below, "context": self.context}

  @classmethod
  def from_entry(cls, entry: dict[str, Any]) -> NumberReader:
    """KeyError, TypeError or ValueError when `entry` is not one."""
    mean, scale, weights = (np.asarray(entry[k], np.float64) for k in ("mean", "scale", "weights"))
    if not mean.ndim == 1 or not mean.shape == scale.shape == weights.shape or not np.all(scale > 0):
      raise ValueError("mean, scale and weights are not one positive-scaled vector each of one length")
    return cls(mean, scale, weights, float(entry["bias"]), read_number.Priors(**entry["priors"]),
               float(entry["uncertain_below"]), bool(entry.get("context", False)))


def fit_verifier(x: np.ndarray, y: np.ndarray, l2: float, context: bool = False) -> NumberReader:
  """The verifier of candidates `x` (inputs) labelled `y` (whole or not), inputs standardised on them;
  `context`: the one input is the context verifier's logit."""
  mean, scale = _standardisation(x)
  weights, bias = fit_logistic((x - mean) / scale, y, l2)
  return NumberReader(mean, scale, weights, bias, context=context)


def held_out_figures(reader: NumberReader, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
  """Log-loss and accuracy (at P = 0.5) of the verifier on candidates it was not fitted on."""
  return held_out_figures_of(np.exp(reader.log_whole_of(x)), y)


def held_out_figures_of(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
  """Log-loss and accuracy (at P = 0.5) of probabilities `p` that candidates are whole, against `y`."""
  return {"log_loss": log_loss(p, y), "accuracy": float(np.mean((p > 0.5) == y))}


class Precomputed:
  """A verifier whose scores were computed beforehand, per candidates object: out-of-fold scores while
  the priors are fitted on top, and no inputs assembled again at every step of that fit."""

  def __init__(self):
    self._scores: dict[int, np.ndarray] = {}

  def add(self, candidates: read_number.Candidates, log_whole: np.ndarray) -> None:
    self._scores[id(candidates)] = log_whole

  def log_whole(self, candidates: read_number.Candidates) -> np.ndarray:
    return self._scores[id(candidates)]


def _standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and standard deviation per column; 1 for a constant column (a unit that never fires)."""
  scale = x.std(axis=0)
  return x.mean(axis=0), np.where(scale > 1e-6, scale, 1.0)


def store(workdir: str, weights: str, step: int, reader: NumberReader, report: dict[str, Any] | None = None
          ) -> str:
  """Adds the reader of checkpoint `step`'s `weights` to DIR/number_reader.json beside the other
  checkpoints', as calibration stores its temperatures (locked, renamed into place, a damaged file moved
  aside). Returns the file's path."""
  path = os.path.join(workdir, READER_FILE)
  calibration.store_entry(path, calibration.entry_key(weights, step), {
      **reader.to_entry(), "weights_kind": weights, "checkpoint_step": step, "fit_on": "validation",
      "report": report or {}})
  return path


def load(workdir: str, weights: str, step: int) -> NumberReader | None:
  """The stored reader of checkpoint `step`'s `weights`; None when there is none, or (with a one-line
  warning) when the file or the entry cannot be read."""
  path = os.path.join(workdir, READER_FILE)
  key = calibration.entry_key(weights, step)
  if not os.path.exists(path):
    return None
  try:
    entry = calibration.read_entry_file(path).get(key)
    return None if entry is None else NumberReader.from_entry(entry)
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning("%s cannot be read (%s: %s): reading numbers without a verifier", path,
                    type(e).__name__, e)
    return None


def for_predictor(predictor: Any) -> tuple[read_number.ProbabilitiesFn, dict[str, Any]]:
  """`read_number`'s probabilities_fn and options for a `predict.Predictor`: its run's stored reader
  (with its context verifier, where it reads one) where there is one, else the priors alone, with a
  one-line warning."""
  reader = load(predictor.workdir, predictor.weights, predictor.checkpoint_step)
  if reader is None:
    logging.warning("%s: no number reader stored for %s: numbers read with the priors alone (python -m "
                    "experiments.number_strings --workdir RUN --fit_verifier fits one)", predictor.workdir,
                    calibration.entry_key(predictor.weights, predictor.checkpoint_step))
    return read_number.predictor_probabilities(predictor), {}
  if not reader.context:
    return read_number.predictor_probabilities(predictor, features=True), reader.options()
  try:
    context_fn = context_verifier.stored_candidate_logits(predictor.workdir)
  except ValueError as e:
    logging.warning("%s: numbers read with the priors alone", e)
    return read_number.predictor_probabilities(predictor), {}
  return read_number.predictor_probabilities(predictor), {**reader.options(), "context_fn": context_fn}
