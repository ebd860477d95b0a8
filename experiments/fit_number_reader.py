"""Reading composed strings, and fitting a run's number reader on them (what `experiments.number_strings
--fit_priors` / `--fit_verifier` run): the priors by coordinate descent over a grid, the verifier's L2 weight
on held-out folds, out-of-fold scores for the priors above it, and the uncertainty threshold.

The fits take string records as `number_strings.find_strings` makes them ({"truth", "candidates", ...});
the network is never run here: candidates are found once, then read under many priors.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from alexnet_jax.inference import digit_image, number_reader, read_number


def edit_distance(a: str, b: str) -> int:
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    previous, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
  return row[-1]


def read_strings(strings: list[dict], priors: read_number.Priors = read_number.PRIORS,
                 verifier: read_number.Verifier | None = None, known_length: bool = False) -> list[dict]:
  """Each string's reading under `priors` (and `verifier`; with `known_length`, as exactly as many digits
  as it has): one record each (the image kept for drawing)."""
  records = []
  for string in strings:
    candidates = string["candidates"]
    length = len(string["truth"]) if known_length else None
    try:
      path = read_number.choose_path(candidates, priors, verifier, length)
    except digit_image.ImageError:  # no segmentation of that length: the free one (so of another) is wrong
      path = read_number.choose_path(candidates, priors, verifier)
    reading = read_number.reading_of(candidates, path)
    truth = string["truth"]
    records.append({key: string[key] for key in ("index", "spacing", "rendering", "truth", "image")} | {
        "length": len(truth), "text": reading.text, "confidence": reading.confidence, "weakest": path.weakest,
        "right": reading.text == truth, "edits": edit_distance(reading.text, truth),
        "boxes": [list(d.box) for d in reading.digits]})
  return records


# The values coordinate descent tries for each prior (`fit_priors`).
PRIOR_GRID = {"wide": (0, 2, 5, 10, 20, 40), "wide_from": (0.9, 1.0, 1.1, 1.2, 1.3),
              "low": (0, 2, 4, 6, 10, 16), "low_from": (0.5, 0.6, 0.7, 0.8), "merge": (0, 1, 2, 3, 5, 8),
              "aspect": (0, 0.25, 0.5, 1, 2, 4), "width": (0, 0.25, 0.5, 1, 2, 4),
              "slack": (0, 0.5, 1, 1.5, 2),
              "digit": (-1, -0.5, 0, 0.5, 1, 2), "cut": (0, 0.5, 1, 1.5, 2, 3, 4),
              "narrow_cut": (0, 1, 2, 4, 8, 16), "pair_width": (0.8, 1.0, 1.2, 1.4, 1.6),
              "crossing": (0, 0.25, 0.5, 1, 2)}


def fit_objective(strings: list[dict], priors: read_number.Priors,
                  verifier: read_number.Verifier | None = None) -> tuple[int, int]:
  """Strings read right, then fewer edits: what the priors are fitted to maximise."""
  right = edits = 0
  for string in strings:
    candidates = string["candidates"]
    text = read_number.path_text(candidates, read_number.choose_path(candidates, priors, verifier))
    right += text == string["truth"]
    edits += edit_distance(text, string["truth"])
  return right, -edits


def fit_priors(strings: list[dict], priors: read_number.Priors = read_number.PRIORS,
               grid: dict[str, tuple[float, ...]] | None = None, rounds: int = 4,
               verifier: read_number.Verifier | None = None) -> read_number.Priors:
  """Coordinate descent over `grid` (default PRIOR_GRID) from `priors`: each prior in turn set to its best
  value with the others fixed (on top of `verifier`), until a round changes nothing. The network is not
  run again."""
  best = fit_objective(strings, priors, verifier)
  for _ in range(rounds):
    start = priors
    for name, values in (grid or PRIOR_GRID).items():
      for value in values:
        candidate = dataclasses.replace(priors, **{name: float(value)})
        score = fit_objective(strings, candidate, verifier)
        if score > best:
          best, priors = score, candidate
    if priors == start:
      break
  return priors


# The validation strings fall in this many folds (string index modulo it: 5 is prime to the 4 spacing
# classes and 2 renderings that strings cycle through, so each fold holds every kind).
FOLDS = 5


def fit_reader(strings: list[dict], target: float = 0.95, priors: read_number.Priors = read_number.PRIORS
               ) -> tuple[number_reader.NumberReader, dict]:
  """The number reader of validation `strings` (found with features), with what the fit reports:

  1. the verifier's L2 weight: the one of number_reader.L2_GRID whose verifier, fitted on 4 folds, reads
     the last fold's strings right most often under `priors` (then: the smallest held-out log-loss);
  2. out-of-fold scores: each fold's candidates scored by the verifier fitted on the other folds, so
     that the priors are fitted on top of scores as honest as those of strings never seen;
  3. the priors (`fit_priors` from `priors`) and the uncertainty threshold (`pick_threshold` at `target`)
     on those scores; 4. the verifier refitted on every string."""
  start = time.perf_counter()
  x = [number_reader.inputs(s["candidates"]) for s in strings]
  y = [number_reader.whole_labels(s["candidates"].boxes, s["true_boxes"]) for s in strings]
  context = strings[0]["candidates"].context is not None
  fold = np.arange(len(strings)) % FOLDS

  def fitted(l2: float, keep: np.ndarray) -> number_reader.NumberReader:
    return number_reader.fit_verifier(np.concatenate([x[i] for i in np.flatnonzero(keep)]),
                                      np.concatenate([y[i] for i in np.flatnonzero(keep)]), l2, context)

  def scored(reader: number_reader.NumberReader, indices: np.ndarray,
             into: number_reader.Precomputed) -> list[dict]:
    for i in indices:
      into.add(strings[i]["candidates"], reader.log_whole_of(x[i]))
    return [strings[i] for i in indices]

  report: dict = {"candidates": int(sum(map(len, y))), "whole": int(sum(map(np.sum, y)))}
  last = np.flatnonzero(fold == FOLDS - 1)
  choice, out_of_fold = {}, {}
  for l2 in number_reader.L2_GRID:
    reader, scores = fitted(l2, fold != FOLDS - 1), number_reader.Precomputed()
    right = fit_objective(scored(reader, last, scores), priors, scores)[0]
    figures = number_reader.held_out_figures(reader, np.concatenate([x[i] for i in last]),
                                             np.concatenate([y[i] for i in last]))
    report[f"held_out_l2_{l2:g}"] = {**figures, "strings_right": right, "strings": len(last)}
    choice[l2], out_of_fold[l2] = (right, -figures["log_loss"]), (reader, scores)
  l2 = max(choice, key=choice.get)
  scores = out_of_fold[l2][1]  # the last fold scored at that weight already
  for k in range(FOLDS - 1):
    scored(fitted(l2, fold != k), np.flatnonzero(fold == k), scores)
  fitted_priors = fit_priors(strings, priors, verifier=scores)
  threshold = pick_threshold(read_strings(strings, fitted_priors, scores), target)
  reader = dataclasses.replace(fitted(l2, fold >= 0), priors=fitted_priors, uncertain_below=threshold)
  report.update(l2=l2, strings=len(strings), folds=FOLDS, seconds=time.perf_counter() - start, target=target)
  return reader, report


def pick_threshold(records: list[dict], target: float) -> float:
  """The lowest threshold on the weakest digit's probability at which the strings not flagged (weakest >=
  threshold) are right at least `target` of the time; 1.0 flags everything when none reaches it."""
  for threshold in sorted({0.0} | {r["weakest"] for r in records}):
    kept = [r["right"] for r in records if r["weakest"] >= threshold]
    if kept and np.mean(kept) >= target:
      return float(threshold)
  return 1.0
