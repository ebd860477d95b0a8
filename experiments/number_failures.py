"""Why composed strings are read wrong: each mistake put in the one class that says what reading it right
would have taken (what `experiments.number_strings` reports under "failures").

- "no whole segmentation": no run of candidates, each one whole digit (`number_reader.matched_digits`),
  covers the string. The cuts are what fail: no path score can help.
- "misread": such runs exist, but in none does the network read every digit right.
- "path choice": one of them reads right, and the chosen path scores higher. The margin is split into the
  score's terms (the network's log-probability, the verifier's log P(whole), the segments' priors and the
  boundaries') by which the chosen path won, so that it shows which term a better reader must change.

Besides, per digit class: how often a digit has no whole candidate at all (a thin 1 inside its neighbours'
columns has none: no vertical cut isolates it).
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.inference import number_reader, read_number

KINDS = ("no whole segmentation", "misread", "path choice")
TERMS = ("network", "verifier", "segment priors", "boundaries")


def score_terms(candidates: read_number.Candidates, paths: list[list[int]], priors: read_number.Priors,
                verifier: read_number.Verifier | None = None) -> np.ndarray:
  """(len(paths), len(TERMS)): what each term adds to each path's score (`read_number.best_path`'s total),
  from per-candidate terms computed once."""
  network = np.log(np.maximum(candidates.probabilities.max(axis=1), 1e-30))
  whole = np.zeros(len(network)) if verifier is None else verifier.log_whole(candidates)
  segments = -priors.segment_penalties(candidates)
  boundaries = candidates.boundary_scores(priors)[candidates.segments[:, 1]]  # the one at each one's end
  terms = np.stack([network, whole, segments, boundaries], axis=1)
  return np.stack([terms[np.asarray(path, np.int64)].sum(axis=0) for path in paths])


def failure_kind(candidates: read_number.Candidates, truth: str, true_boxes: list, priors: read_number.Priors,
                 verifier: read_number.Verifier | None = None) -> tuple[str, list[int]]:
  """What reading `truth` right needed (one of KINDS), and for "path choice" the best-scoring path of whole
  digits that reads it."""
  matched = number_reader.matched_digits(candidates.boxes, true_boxes)
  digits = np.array([int(d) for d in truth])
  whole = matched >= 0
  right = whole & (candidates.probabilities.argmax(axis=1) == digits[np.maximum(matched, 0)])
  scores = candidates.segment_scores(priors, verifier)
  boundaries = candidates.boundary_scores(priors)
  impossible = -1e9  # far below any real score: a path through one is the best only where no other is
  for kind, allowed in (("path choice", right), ("misread", whole)):
    path = read_number.best_path(candidates.segments, np.where(allowed, scores, impossible), boundaries)
    if np.all(allowed[path]) and sorted(matched[path].tolist()) == list(range(len(truth))):
      return kind, path
  return "no whole segmentation", []


def diagnose(strings: list[dict], records: list[dict], priors: read_number.Priors,
             verifier: read_number.Verifier | None = None) -> dict:
  """Per spacing class: the mistakes of `records` (fit_number_reader.read_strings of `strings`) by kind,
  and, over the path-choice ones, how much more the chosen path scored than the right one, per term (the
  sum is never negative: the chosen path is the best); per digit class, the share of digits without a
  whole candidate."""
  kinds: dict[str, dict[str, int]] = {}
  margins: dict[str, list[np.ndarray]] = {}
  missing, digits = np.zeros(10), np.zeros(10)
  for string, record in zip(strings, records, strict=True):
    candidates, truth = string["candidates"], string["truth"]
    matched = number_reader.matched_digits(candidates.boxes, string["true_boxes"])
    for k, digit in enumerate(truth):
      digits[int(digit)] += 1
      missing[int(digit)] += not np.any(matched == k)
    if record["right"]:
      continue
    kind, path = failure_kind(candidates, truth, string["true_boxes"], priors, verifier)
    counts = kinds.setdefault(string["spacing"], dict.fromkeys(KINDS, 0))
    counts[kind] += 1
    if kind == "path choice":
      chosen = list(read_number.choose_path(candidates, priors, verifier).segments)
      chosen_terms, right_terms = score_terms(candidates, [chosen, path], priors, verifier)
      margins.setdefault(string["spacing"], []).append(chosen_terms - right_terms)
  return {"mistakes": kinds,
          "path_choice_margin": {spacing: dict(zip(TERMS, np.mean(d, axis=0).round(3).tolist(), strict=True))
                                  for spacing, d in margins.items()},
          "no_whole_candidate": {str(d): float(missing[d] / digits[d]) for d in range(10) if digits[d]}}


def print_failures(failures: dict) -> None:
  for spacing, counts in failures["mistakes"].items():
    line = ", ".join(f"{kind} {count}" for kind, count in counts.items())
    margin = failures["path_choice_margin"].get(spacing)
    terms = "" if margin is None else "; the chosen path scored higher by (nats, mean): " + ", ".join(
        f"{term} {value:+.2f}" for term, value in margin.items())
    print(f"mistakes, {spacing}: {line}{terms}")
  shares = ", ".join(f"{d}: {share:.1%}" for d, share in failures["no_whole_candidate"].items())
  print(f"digits without a whole candidate, per class: {shares}")
