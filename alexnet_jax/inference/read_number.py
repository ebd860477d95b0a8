"""Read a string of digits (a postcode, a cheque amount, an ID number) from one image.

  reading = read_number.read_number(image, read_number.predictor_probabilities(predictor))
  reading.text, reading.confidence, reading.uncertain, reading.digits[0].box

Recognition-based segmentation (LeCun et al. 1998, "Gradient-based learning applied to document
recognition", section V): the image is cut into more pieces than there are digits, every plausible run of
consecutive pieces is read by the network, and dynamic programming picks the segmentation whose digits the
network believes most. Steps:

1. ink: greyscale and polarity as `predict` reads one digit (the border's median is the background), the
   uneven lighting of a photo flattened (a grey opening wider than any stroke estimates the background,
   which is subtracted), then binarised at Otsu's threshold;
2. pieces: connected components (8-connected); specks much smaller than the digits are dropped; a
   component too wide to be one digit is sliced at candidate cuts (minima of its column profile, and a
   regular grid of columns, so that digits touching at a thick stroke can still be cut);
3. candidate segments: every run of consecutive pieces (ordered by their centre, so
   that the separate top bar of a 5 sits beside its body) no wider than `MAX_WIDTH` digit heights;
4. one batch: each segment's ink (its pieces, with the faint anti-aliased pixels nearest to them) is
   preprocessed exactly as a single digit (`digit_image.preprocess`) and read by the network in one call;
5. the path: best over segmentations of sum(log max probability + log-prior of the digit's size and
   shape, and of the cuts at its ends), by dynamic programming over the pieces (`choose_path`). Steps 1-4
   (`find_candidates`) do not depend on the prior, so that its weights (`Priors`) can be fitted on
   validation strings without running the network again.

With a `verifier` (number_reader.py: a per-run classifier of the network's penultimate features and the
candidate's shape, fitted on validation strings), each candidate also scores log P(one whole digit), so
that a confident reading of a fragment or of two merged digits no longer wins the path. A verifier fitted
with a `context_fn` (context_verifier.py: a small network that sees each candidate among its neighbours)
reads that network's judgement instead of the features, and a candidate cut from a wider component is read
by both networks (`read_in_context`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import scipy.ndimage as ndi

from alexnet_jax.inference import digit_image

# Defaults, documented in docs/evaluation_and_prediction.md#reading-a-whole-number. Candidates (steps 2-3):
UNCERTAIN_BELOW = 0.9  # a reading is `uncertain` when its weakest digit's score is below this
MAX_WIDTH = 1.3  # the widest digit, in digit heights (MNIST's widest are about 1.0)
SLICE_WIDTH = 0.6  # components wider than this (in digit heights), and not low, get candidate cuts
GRID_STEP = 1 / 7  # candidate cuts every this many digit heights, besides the profile's minima
SPECK = 0.2  # components smaller than this (in digit heights) both ways are noise
SHORT = 0.45  # components lower than this (in digit heights) are never cut: a bar, a dash
HALO = 1.5  # faint pixels this close (px) to a piece's ink are that piece's
OPENING = 0.5  # background estimate: grey opening of this fraction of the image's shorter side
# Bounds on the work one image may ask for (a hostile upload to POST /api/read): a line of 10 MNIST digits
# has about 30 pieces and 200 candidate digits.
MAX_PIECES = 300
MAX_SEGMENTS = 3000
# log(width / height) of each digit class's ink box, mean and standard deviation over MNIST's training
# split (55,000 digits, binarised at 0.45): `python -m experiments.number_strings --aspect_table`.
DIGIT_ASPECT = np.array([(-0.117, 0.214), (-0.997, 0.486), (-0.083, 0.237), (-0.257, 0.223), (-0.265, 0.227),
                         (-0.085, 0.281), (-0.355, 0.226), (-0.29, 0.227), (-0.306, 0.234), (-0.425, 0.213)])


@dataclasses.dataclass(frozen=True)
class Priors:
  """The penalties that, added to the network's log-probabilities, choose the path (the network reads
  fragments and merged pairs of digits confidently: it was never taught to reject them); sizes in digit
  heights. Fitted on strings composed from validation digits, never test digits, by coordinate descent
  over a grid (`python -m experiments.number_strings --workdir RUN --fit_priors`)."""

  # Fitted from the hand-set values (wide 20 from 0.95, low 6 from 0.7, merge 3, aspect 1, width 0, slack
  # 1.5, digit 0, cut 1.5, narrow_cut 0 below 1.2, crossing 0) on 600 5-digit validation strings, half on
  # paper, read by a width-0.5 network (99.53% test accuracy): `python -m experiments.number_strings
  # --workdir RUN --fit_priors --count 600 --min_length 5 --max_length 5 --paper` (which, started from
  # these, changes none of them).
  wide: float = 40.0  # per squared digit height of width beyond `wide_from`
  wide_from: float = 0.95
  low: float = 16.0  # per digit height of height below `low_from`: a piece of a digit
  low_from: float = 0.8
  merge: float = 3.0  # per pair of components side by side in one digit
  aspect: float = 1.0  # per squared standard deviation / 2 of log(width / height) from the read class's
  width: float = 0.5  # ... and of log(width / digit height), beyond `slack` (DIGIT_ASPECT)
  slack: float = 1.0
  digit: float = 0.0  # per digit: the string's length prior
  cut: float = 1.5  # per cut through a component
  narrow_cut: float = 16.0  # per digit height the cut component is narrower than `pair_width`
  pair_width: float = 1.2
  crossing: float = 2.0  # per stroke beyond the first that a cut crosses

  def segment_penalties(self, candidates: Candidates) -> np.ndarray:
    """(m,): minus the log-prior of each candidate digit."""
    c = candidates

    def unlike(z: np.ndarray) -> np.ndarray:  # a shape within `slack` standard deviations is not doubted
      return 0.5 * np.maximum(0.0, z - self.slack) ** 2

    return (self.wide * np.maximum(0.0, c.width - self.wide_from) ** 2
            + self.low * np.maximum(0.0, self.low_from - c.tall) + self.merge * c.side_by_side
            + self.aspect * unlike(c.aspect_z) + self.width * unlike(c.width_z) + self.digit)

  def boundary_penalties(self, candidates: Candidates) -> np.ndarray:
    """(n + 1,): minus the log-prior of a digit boundary before piece i (i = n: after the last)."""
    c = candidates
    narrowness = np.maximum(0.0, self.pair_width - c.cut_width)
    return c.cut * (self.cut + self.narrow_cut * narrowness + self.crossing * np.maximum(0, c.crossings - 1))


PRIORS = Priors()

# Images in MNIST form -> probabilities (N, 10), or (probabilities, penultimate features (N, width)).
ProbabilitiesFn = Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]]
# The pieces and the candidate segments (m, 2) -> (m, 11) outputs of a network that sees each candidate in
# its surroundings (context_verifier.py): the logit of P(one whole digit), then the digit's 10 logits.
ContextFn = Callable[["Pieces", np.ndarray], np.ndarray]
# How much the context network's reading of a candidate cut from a wider component weighs against the digit
# network's (a geometric mean of the two distributions). Candidates of whole components are read by the
# digit network alone: the context network reads them worse (its window is coarser), and a cut is where a
# neighbour's strokes are left in or a digit's own taken out. Equal weights: validation strings could not
# tell them from 0.7, and read worse at 1 (docs/results/evaluation.md).
CONTEXT_READING = 0.5


class Verifier(Protocol):
  """Scores how likely each candidate is to be exactly one whole digit (number_reader.NumberReader)."""

  def log_whole(self, candidates: Candidates) -> np.ndarray:
    """(m,): log P(candidate is one whole digit)."""


@dataclasses.dataclass(frozen=True)
class DigitReading:
  """One digit of a reading: the network's probabilities and the box [x, y, w, h] of its ink, in the input
  image's pixels."""

  digit: int
  probabilities: tuple[float, ...]
  box: tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class NumberReading:
  """`confidence`: the product of the chosen digits' probabilities (the network's belief that every digit
  is right, given the segmentation). `uncertain`: the weakest digit's probability is below the threshold."""

  text: str
  confidence: float
  uncertain: bool
  digits: tuple[DigitReading, ...]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict())


@dataclasses.dataclass(frozen=True)
class Pieces:
  """The image cut into pieces: `owner[y, x]` is the piece (0..n-1) a pixel's ink belongs to (-1: none),
  `ink` the flattened ink in [0, 1] and `height` the estimated digit height in pixels."""

  ink: np.ndarray
  owner: np.ndarray
  boxes: np.ndarray  # (n, 4): x0, y0, x1, y1 (exclusive) of each piece's binarised ink
  component: np.ndarray  # (n,): the connected component each piece was cut from
  component_width: np.ndarray  # (n,): the width in pixels of that component
  crossings: np.ndarray  # (n,): strokes crossed by the cut at the piece's left (0: not cut there)
  height: float


@dataclasses.dataclass(frozen=True)
class Candidates:
  """Everything the path is chosen from, computed once per image: the pieces, the candidate digits
  (`segments`, runs first..stop-1 of pieces), the network's `probabilities` of each, and what the priors
  weigh. Sizes in digit heights; `*_z`: standard deviations from the read class's mean (DIGIT_ASPECT)."""

  pieces: Pieces
  segments: np.ndarray  # (m, 2): first, stop
  probabilities: np.ndarray  # (m, 10)
  boxes: np.ndarray  # (m, 4): x0, y0, x1, y1 of each segment's binarised ink
  width: np.ndarray  # (m,)
  tall: np.ndarray  # (m,)
  side_by_side: np.ndarray  # (m,): neighbouring components that barely share columns (see _side_by_side)
  aspect_z: np.ndarray  # (m,): of log(width / height)
  width_z: np.ndarray  # (m,): of log(width / digit height)
  cut: np.ndarray  # (n + 1,): whether a boundary before piece i cuts through a component
  cut_width: np.ndarray  # (n + 1,): that component's width
  crossings: np.ndarray  # (n + 1,): strokes the cut crosses
  features: np.ndarray | None = None  # (m, width): the network's penultimate layer, where asked for
  context: np.ndarray | None = None  # (m,): the context network's whole-digit logits, where one was given

  def segment_scores(self, priors: Priors, verifier: Verifier | None = None) -> np.ndarray:
    """(m,): log-probability of the read digit plus the log-prior of the segment (and the verifier's
    log-probability that it is one whole digit)."""
    scores = np.log(np.maximum(self.probabilities.max(axis=1), 1e-30)) - priors.segment_penalties(self)
    return scores if verifier is None else scores + verifier.log_whole(self)

  def boundary_scores(self, priors: Priors) -> np.ndarray:
    return -priors.boundary_penalties(self)


@dataclasses.dataclass(frozen=True)
class Path:
  """The chosen segments (indices into `Candidates.segments`, left to right) and the weakest digit's
  score: its probability times its priors (its segment's and the boundaries at its two ends; the length
  prior aside), so that a confident fragment or merge is doubtful too."""

  segments: tuple[int, ...]
  weakest: float


def predictor_probabilities(predictor: Callable[..., np.ndarray], features: bool = False) -> ProbabilitiesFn:
  """A `predict.Predictor` as the function `read_number` takes (images already in MNIST form); with
  `features`, it returns the penultimate features too (what a verifier reads), from the same pass."""
  if features:
    return lambda images: predictor.probabilities_and_features(images, preprocessed=True)
  return lambda images: predictor(images, preprocessed=True)


def flattened_ink(image: np.ndarray) -> np.ndarray:
  """Light-on-dark ink in [0, 1] with the background (uneven lighting included) at 0."""
  grey = digit_image.to_greyscale(image)
  border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
  if np.median(border) > 0.5:  # dark ink on light paper
    grey = 1.0 - grey
  size = max(3, round(OPENING * min(grey.shape)))
  ink = grey - ndi.grey_opening(grey, size=(size, size))
  contrast = float(np.percentile(ink, 99.9)) if ink.size > 1000 else float(ink.max())
  if contrast < digit_image.MIN_CONTRAST:
    raise digit_image.ImageError(
        f"no ink found (blank image: contrast {contrast:.3f} < {digit_image.MIN_CONTRAST})")
  return np.clip(ink / contrast, 0.0, 1.0).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
  """The threshold in [0, 1] that maximises the between-class variance (Otsu 1979)."""
  histogram, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
  weights = histogram / max(1, histogram.sum())
  centres = (edges[:-1] + edges[1:]) / 2
  below = np.cumsum(weights)
  mean_below = np.cumsum(weights * centres)
  total_mean = mean_below[-1]
  with np.errstate(divide="ignore", invalid="ignore"):
    between = (total_mean * below - mean_below) ** 2 / (below * (1.0 - below))
  return float(edges[1:][np.nanargmax(np.where(np.isfinite(between), between, np.nan))])


def binarise(ink: np.ndarray) -> np.ndarray:
  """Ink pixels: Otsu's threshold, kept within [0.2, 0.6] of the contrast."""
  return ink > min(max(otsu_threshold(ink), 0.2), 0.6)


def _components(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
  labels, count = ndi.label(mask, structure=np.ones((3, 3), bool))
  if count == 0:
    raise digit_image.ImageError("no ink found (nothing above the binarisation threshold)")
  return labels, ndi.find_objects(labels)


def digit_height(slices: Sequence[tuple[slice, slice]]) -> float:
  """The median height of the tall components: specks and the bars of broken digits are low."""
  heights = np.array([s[0].stop - s[0].start for s in slices], float)
  return float(np.median(heights[heights >= 0.5 * heights.max()]))


def candidate_cuts(column_ink: np.ndarray, height: float) -> list[int]:
  """Columns (offsets from the component's left) where a wide component may be cut: the minima of its
  smoothed column profile, and a regular grid; none nearer than a fifth of a digit height to an end."""
  width = len(column_ink)
  margin = max(2, round(0.2 * height))
  if width < 2 * margin + 1:
    return []
  profile = np.convolve(column_ink, [0.25, 0.5, 0.25], mode="same")
  inner = np.arange(margin, width - margin)
  minima = [x for x in inner if profile[x] <= profile[x - 1] and profile[x] <= profile[x + 1]]
  step = max(2, round(GRID_STEP * height))
  cuts = sorted(set(minima) | set(range(margin, width - margin + 1, step)))
  kept: list[int] = []
  for x in cuts:  # cuts closer than 2 px: keep the first
    if not kept or x - kept[-1] >= 2:
      kept.append(x)
  return kept


def cut_into_pieces(image: np.ndarray) -> Pieces:
  """Steps 1-2: the flattened ink, and which piece each pixel belongs to. Raises digit_image.ImageError
  beyond MAX_PIECES pieces."""
  ink = flattened_ink(image)
  labels, slices = _components(binarise(ink))
  height = digit_height(slices)
  pieces = np.zeros(labels.shape, np.int32)  # 0: background; pieces numbered from 1 here
  component, widths, crossings = [-1], [0], [0]
  for index, (rows, cols) in enumerate(slices):
    mine = labels[rows, cols] == index + 1
    if max(rows.stop - rows.start, cols.stop - cols.start) < SPECK * height:
      continue
    bounds = [0, cols.stop - cols.start]
    if bounds[1] > SLICE_WIDTH * height and rows.stop - rows.start >= SHORT * height:  # a low bar is one
      bounds[1:1] = candidate_cuts(mine.sum(axis=0), height)
    for left, right in zip(bounds[:-1], bounds[1:], strict=False):
      part = np.zeros_like(mine)
      part[:, left:right] = mine[:, left:right]
      if part.any():
        component.append(index)
        widths.append(bounds[-1])
        crossings.append(_strokes(mine[:, left]) if left > 0 else 0)
        pieces[rows, cols][part] = len(component) - 1
    if len(component) - 1 > MAX_PIECES:
      raise digit_image.ImageError(f"too many pieces of ink (more than {MAX_PIECES}): not a line of digits")
  if len(component) == 1:
    raise digit_image.ImageError("no ink found (only specks)")
  return _ordered(ink, pieces, height, component=np.array(component), widths=np.array(widths),
                  crossings=np.array(crossings))


def _strokes(column: np.ndarray) -> int:
  """How many separate runs of ink a column holds."""
  return int(np.count_nonzero(np.diff(column.astype(np.int8), prepend=0) == 1))


def _ordered(ink: np.ndarray, pieces: np.ndarray, height: float, *, component: np.ndarray, widths: np.ndarray,
             crossings: np.ndarray) -> Pieces:
  """Pieces renumbered by the column of their centre; every faint pixel within `HALO` of a piece is given
  to the nearest one. Per-piece arrays are indexed from 1 (0: the background)."""
  count = len(component) - 1
  centres = np.array([c for _, c in ndi.center_of_mass(pieces > 0, pieces, np.arange(1, count + 1))])
  rank = np.empty(count + 1, np.int32)
  rank[0] = -1
  rank[1 + np.argsort(centres, kind="stable")] = np.arange(count)
  distance, (near_rows, near_cols) = ndi.distance_transform_edt(pieces == 0, return_indices=True)
  owner = rank[pieces[near_rows, near_cols]]
  owner[distance > HALO] = -1
  boxes = np.zeros((count, 4), np.int64)
  for index, (rows, cols) in enumerate(ndi.find_objects(rank[pieces] + 1)):
    boxes[index] = (cols.start, rows.start, cols.stop, rows.stop)
  order = 1 + np.argsort(centres, kind="stable")
  return Pieces(ink, owner, boxes, component[order], widths[order], crossings[order], height)


def candidate_segments(pieces: Pieces) -> list[tuple[int, int]]:
  """Step 3: (first, stop) runs of consecutive pieces that may be one digit; every single piece is one,
  so that some path always exists. Raises digit_image.ImageError beyond MAX_SEGMENTS."""
  segments = []
  count = len(pieces.boxes)
  for first in range(count):
    for stop in range(first + 1, count + 1):
      box = union_box(pieces.boxes[first:stop])
      if stop > first + 1 and box[2] - box[0] > MAX_WIDTH * pieces.height:
        break
      segments.append((first, stop))
    if len(segments) > MAX_SEGMENTS:
      raise digit_image.ImageError(f"too many candidate digits (more than {MAX_SEGMENTS}): not a line of "
                                   "digits")
  return segments


def union_box(boxes: np.ndarray) -> tuple[int, int, int, int]:
  return int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max())


def segment_image(pieces: Pieces, first: int, stop: int) -> np.ndarray:
  """The ink of pieces first..stop-1 (and their faint edges) in their box, on a 2-pixel black margin."""
  x0, y0, x1, y1 = union_box(pieces.boxes[first:stop])
  pad = int(np.ceil(HALO))
  top, left = max(0, y0 - pad), max(0, x0 - pad)
  owner = pieces.owner[top:y1 + pad, left:x1 + pad]
  crop = np.where((owner >= first) & (owner < stop), pieces.ink[top:y1 + pad, left:x1 + pad], 0.0)
  return np.pad(crop, 2)


def _side_by_side(pieces: Pieces, first: int, stop: int) -> int:
  """How many neighbouring components of pieces first..stop-1 overlap by less than half the narrower's
  columns."""
  components = pieces.component[first:stop]
  spans = sorted((int(pieces.boxes[first:stop][components == c, 0].min()),
                  int(pieces.boxes[first:stop][components == c, 2].max())) for c in np.unique(components))
  count = 0
  for (a0, a1), (b0, b1) in zip(spans[:-1], spans[1:], strict=True):
    count += min(a1, b1) - max(a0, b0) < 0.5 * min(a1 - a0, b1 - b0)
  return count


def find_candidates(image: np.ndarray, probabilities_fn: ProbabilitiesFn, context_fn: ContextFn | None = None
                    ) -> Candidates:
  """Steps 1-4: the pieces, the candidate digits and the network's reading of them all in one call (and
  the context network's judgement and reading of them, in another: the probabilities of a candidate cut
  from a wider component are then the geometric mean of both readings, `read_in_context`)."""
  pieces = cut_into_pieces(image)
  segments = np.array(candidate_segments(pieces), np.int64)
  batch = np.stack([digit_image.preprocess(segment_image(pieces, *s)) for s in segments])
  output = probabilities_fn(batch)
  probabilities, features = output if isinstance(output, tuple) else (output, None)
  probabilities, context = np.array(probabilities, np.float64), None  # a copy: cut ones are rewritten
  if context_fn is not None:
    outputs = np.asarray(context_fn(pieces, segments), np.float64)
    cuts = component_cuts(pieces)
    cut = cuts[segments[:, 0]] | cuts[segments[:, 1]]
    probabilities[cut] = read_in_context(probabilities[cut], outputs[cut, 1:])
    context = outputs[:, 0]
  candidates = measured(pieces, segments, probabilities)
  return dataclasses.replace(
      candidates, features=None if features is None else np.asarray(features, np.float32), context=context)


def read_in_context(probabilities: np.ndarray, context_logits: np.ndarray, weight: float = CONTEXT_READING
                    ) -> np.ndarray:
  """(m, 10): the digit network's probabilities and the context network's (its logits) combined as a
  weighted geometric mean, renormalised: a product of experts, each sure only where the other agrees."""
  log_context = context_logits - np.logaddexp.reduce(context_logits, axis=1, keepdims=True)
  combined = (1 - weight) * np.log(np.maximum(probabilities, 1e-30)) + weight * log_context
  weights = np.exp(combined - combined.max(axis=1, keepdims=True))
  return weights / weights.sum(axis=1, keepdims=True)


def measured(pieces: Pieces, segments: np.ndarray, probabilities: np.ndarray) -> Candidates:
  """The candidates with the sizes and shapes the priors weigh."""
  boxes = np.array([union_box(pieces.boxes[first:stop]) for first, stop in segments], np.int64)
  width = (boxes[:, 2] - boxes[:, 0]) / pieces.height
  tall = (boxes[:, 3] - boxes[:, 1]) / pieces.height
  mean, std = DIGIT_ASPECT[probabilities.argmax(axis=1)].T
  side_by_side = np.array([_side_by_side(pieces, first, stop) for first, stop in segments], float)
  cut = component_cuts(pieces)
  cut_width, crossings = np.zeros(len(cut)), np.zeros(len(cut))
  cut_width[1:-1] = pieces.component_width[1:] / pieces.height
  crossings[1:-1] = pieces.crossings[1:]
  aspect_z, width_z = np.abs(np.log(width / tall) - mean) / std, np.abs(np.log(width) - mean) / std
  return Candidates(pieces, segments, probabilities, boxes, width, tall, side_by_side, aspect_z, width_z,
                    cut=cut, cut_width=cut_width, crossings=crossings)


def component_cuts(pieces: Pieces) -> np.ndarray:
  """(n + 1,) bool: whether the boundary before piece i (i = n: after the last) cuts through a component."""
  cut = np.zeros(len(pieces.boxes) + 1, bool)
  cut[1:-1] = pieces.component[1:] == pieces.component[:-1]
  return cut


def best_path(segments: np.ndarray | Sequence[tuple[int, int]], scores: np.ndarray, boundaries: np.ndarray,
              length: int | None = None) -> list[int]:
  """Step 5: indices of the segments that cover the pieces once, in order, with the largest total of
  their scores and of `boundaries[i]`, the score of a boundary before piece i (dynamic programming); with
  `length`, the best of exactly that many segments (ImageError where there is none)."""
  if length is not None:
    return _best_path_of_length(segments, scores, boundaries, length)
  count = len(boundaries) - 1
  best = np.full(count + 1, -np.inf)
  best[0] = 0.0
  came_from = np.full(count + 1, -1)
  ending: dict[int, list[int]] = {}
  for index, (_, stop) in enumerate(segments):
    ending.setdefault(int(stop), []).append(index)
  for stop in range(1, count + 1):
    for index in ending.get(stop, []):
      total = best[segments[index][0]] + scores[index] + boundaries[stop]
      if total > best[stop]:
        best[stop], came_from[stop] = total, index
  path, stop = [], count
  while stop > 0:
    path.append(int(came_from[stop]))
    stop = int(segments[path[-1]][0])
  return path[::-1]


def _best_path_of_length(segments: np.ndarray | Sequence[tuple[int, int]], scores: np.ndarray,
                         boundaries: np.ndarray, length: int) -> list[int]:
  """`best_path` over segmentations of exactly `length` segments: the same recursion, with the number of
  segments so far as a second index (best[k, i]: the best k segments covering pieces 0..i-1)."""
  count = len(boundaries) - 1
  segments = np.asarray(segments, np.int64).reshape(-1, 2)
  if not 1 <= length <= count:
    raise digit_image.ImageError(f"cannot be read as {length} digits: the ink breaks into {count} pieces")
  best = np.full((length + 1, count + 1), -np.inf)
  best[0, 0] = 0.0
  came_from = np.full((length + 1, count + 1), -1)
  for index in np.argsort(segments[:, 1], kind="stable"):  # every segment after those it can follow
    first, stop = segments[index]
    total = best[:-1, first] + scores[index] + boundaries[stop]
    better = total > best[1:, stop]
    best[1:, stop][better] = total[better]
    came_from[1:, stop][better] = index
  if not np.isfinite(best[length, count]):
    raise digit_image.ImageError(f"cannot be read as {length} digits: no {length} candidate digits cover "
                                 "the ink")
  path, stop = [], count
  for k in range(length, 0, -1):
    path.append(int(came_from[k, stop]))
    stop = int(segments[path[-1], 0])
  return path[::-1]


def choose_path(candidates: Candidates, priors: Priors = PRIORS, verifier: Verifier | None = None,
                length: int | None = None) -> Path:
  """Step 5 under `priors` (and `verifier`; of exactly `length` digits where given); cheap, so that priors
  can be fitted on candidates computed once."""
  scores = candidates.segment_scores(priors, verifier)
  boundaries = candidates.boundary_scores(priors)
  chosen = best_path(candidates.segments, scores, boundaries, length)
  first, stop = candidates.segments[chosen, 0], candidates.segments[chosen, 1]
  # The length prior is a constant per digit, not evidence against any one of them.
  digit_scores = scores[chosen] + priors.digit + boundaries[first] + boundaries[stop]
  return Path(tuple(chosen), float(np.exp(min(0.0, digit_scores.min()))))


def path_text(candidates: Candidates, path: Path) -> str:
  return "".join(str(int(candidates.probabilities[i].argmax())) for i in path.segments)


def read_number(image: np.ndarray, probabilities_fn: ProbabilitiesFn,
                uncertain_below: float = UNCERTAIN_BELOW, priors: Priors = PRIORS,
                verifier: Verifier | None = None, *, context_fn: ContextFn | None = None,
                length: int | None = None) -> NumberReading:
  """The digits of `image` (any size, (H, W) or (H, W, 1|3|4), either polarity), left to right; with
  `length`, exactly that many (a field of known length: a postcode, an ID number).

  `probabilities_fn`: uint8 (N, 28, 28, 1) images in MNIST form -> (N, 10) probabilities (and, for a
  `verifier`, the penultimate features); called once. `context_fn`: the context verifier a `verifier` fitted
  with one reads. Raises digit_image.ImageError when the image holds no ink, too many pieces to be a line
  of digits, or too few to be `length` digits."""
  candidates = find_candidates(image, probabilities_fn, context_fn)
  return reading_of(candidates, choose_path(candidates, priors, verifier, length), uncertain_below)


def reading_of(candidates: Candidates, path: Path, uncertain_below: float = UNCERTAIN_BELOW) -> NumberReading:
  digits = []
  for index in path.segments:
    x0, y0, x1, y1 = (int(v) for v in candidates.boxes[index])
    probabilities = candidates.probabilities[index]
    digits.append(DigitReading(int(probabilities.argmax()), tuple(float(p) for p in probabilities),
                               (x0, y0, x1 - x0, y1 - y0)))
  return NumberReading(text="".join(str(d.digit) for d in digits),
                       confidence=float(np.prod([max(d.probabilities) for d in digits])),
                       uncertain=bool(path.weakest < uncertain_below), digits=tuple(digits))


def read_files(probabilities_fn: ProbabilitiesFn, paths: Sequence[str], **options) -> list[dict]:
  """One record per path, in order: {"file", **reading}, or {"file", "error"}; one bad file never stops
  the others. `options`: read_number's (uncertain_below, priors, verifier, context_fn, length)."""
  records = []
  for path in paths:
    try:
      reading = read_number(digit_image.read_image(path), probabilities_fn, **options)
      records.append({"file": path, **reading.to_dict()})
    except digit_image.ImageError as e:
      message = str(e) if str(e).startswith(path) else f"{path}: {e}"
      records.append({"file": path, "error": message})
  return records


def text_line(record: dict) -> str:
  flag = "  uncertain" if record["uncertain"] else ""
  return f"{record['file']}: {record['text']}  (confidence {record['confidence']:.3f}){flag}"
