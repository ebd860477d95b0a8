"""How well `read_number` reads digit strings composed from MNIST test digits no one has looked at:

  python -m experiments.number_strings --workdir RUN [--count N] [--seed S] [--paper] [--out DIR]

Every string is composed from the recorded seed alone (`numpy.random.default_rng([seed, index])`): 5 to
10 digits of the run's **test** split, each scaled by 0.85-1.15, on a baseline that slants and waves
(`compose`), with the gaps between the digits' boxes (of all their non-zero pixels) in one spacing class
per string: `wide` (4-8 px), `narrow` (1-3), `touching` (0) or `overlapping` (-1 to -3; the ink of
overlapping digits is their maximum). `--paper` renders every other group of strings as a photo of paper:
dark ink on a light background with a lighting gradient, noise and JPEG compression (Pillow).

With `--fit_verifier`, the run's number reader (alexnet_jax/inference/number_reader.py: the "one whole
digit?" verifier of each candidate, and the priors and uncertainty threshold fitted with it) is fitted on
the validation strings, stored in RUN/number_reader.json and used for the test strings; a run that has
one stored is read with it (unless `--noverifier`). The fitting itself is experiments/fit_number_reader.py.
Where the run has a context verifier (experiments/train_context_verifier.py), the reader is fitted on top
of it (unless `--nocontext`).

Reports whole-string accuracy (with Wilson's 95% interval) and per-digit accuracy (1 - edit distance / length)
per spacing class and rendering; the uncertainty threshold is picked on strings composed the same way from
validation digits (the lowest weakest-digit probability at which the unflagged validation strings are right
`--target` of the time), then the test strings flagged and the accuracy of the others are reported at it.
With `--known_length`, the test strings are also read as exactly as many digits as each has (a field of
known length: `read_number(..., length=N)`) and that table is reported too. The mistakes are sorted by
what reading them right needed: better cuts, a better reading, or a better choice of path
(experiments/number_failures.py). Writes `results.json` and `worst.png` (the most confident mistakes) to
`--out` (default RUN/number_strings).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import scipy.stats
from absl import app, flags
from PIL import Image

from alexnet_jax import cli
from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import context_verifier, number_reader, predict, read_number, trained_run
from experiments import number_failures
from experiments.fit_number_reader import fit_priors, fit_reader, pick_threshold, read_strings

FLAGS = flags.FLAGS
SPACINGS = {"wide": (4, 8), "narrow": (1, 3), "touching": (0, 0), "overlapping": (-3, -1)}
RENDERINGS = ("black", "paper")
LENGTHS = (5, 10)
MARGIN = 8  # px of background around a composed string
VALIDATION_STREAM = 1  # validation strings: default_rng([seed, index, VALIDATION_STREAM])


def tight(digit: np.ndarray) -> np.ndarray:
  """An MNIST digit cropped to the box of its non-zero pixels."""
  rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
  return digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def scaled(digit: np.ndarray, factor: float) -> np.ndarray:
  height, width = digit.shape
  size = (max(1, round(width * factor)), max(1, round(height * factor)))
  return np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.BILINEAR))


def compose(digits: np.ndarray, gap_range: tuple[int, int], rng: np.random.Generator
            ) -> tuple[np.ndarray, list]:
  """Light-on-dark uint8 image of the digits side by side, gaps between their boxes drawn from
  `gap_range` (inclusive; negative: overlapping), and each digit's box [x, y, w, h]."""
  crops = [scaled(tight(d), rng.uniform(0.85, 1.15)) for d in digits]
  low, high = gap_range
  gaps = rng.integers(low, high + 1, len(crops) - 1)
  lefts = np.concatenate([[0], np.cumsum([c.shape[1] for c in crops[:-1]] + gaps)])
  slope, wave = rng.uniform(-0.12, 0.12), rng.uniform(0, 4)
  period, phase = rng.uniform(60, 160), rng.uniform(0, 2 * np.pi)
  centres = lefts + np.array([c.shape[1] for c in crops]) / 2
  baseline = slope * centres + wave * np.sin(2 * np.pi * centres / period + phase)
  baseline += rng.normal(0, 1, len(crops))
  bottoms = np.round(baseline - baseline.min()).astype(int) + max(c.shape[0] for c in crops)
  width = int(lefts[-1] + crops[-1].shape[1]) + 2 * MARGIN
  image = np.zeros((int(bottoms.max()) + 2 * MARGIN, width), np.uint8)
  boxes = []
  for crop, left, bottom in zip(crops, lefts, bottoms, strict=True):
    top, x = int(bottom - crop.shape[0] + MARGIN), int(left + MARGIN)
    region = image[top:top + crop.shape[0], x:x + crop.shape[1]]
    np.maximum(region, crop, out=region)
    boxes.append([x, top, crop.shape[1], crop.shape[0]])
  return image, boxes


def on_paper(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Dark ink on light paper lit unevenly, with sensor noise, through JPEG."""
  height, width = image.shape
  angle = rng.uniform(0, 2 * np.pi)
  rows, cols = np.indices(image.shape)
  ramp = (np.cos(angle) * cols / width + np.sin(angle) * rows / height)
  paper = 0.92 - rng.uniform(0.1, 0.35) * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
  ink = image.astype(np.float32) / 255.0
  grey = paper * (1.0 - ink) + rng.uniform(0.05, 0.2) * ink + rng.normal(0, 0.02, image.shape)
  encoded = io.BytesIO()
  Image.fromarray(np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)).save(
      encoded, "JPEG", quality=int(rng.integers(60, 91)))
  return np.asarray(Image.open(encoded))


def make_string(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, spacing: str,
                rendering: str, *, lengths: tuple[int, int] = LENGTHS) -> tuple[np.ndarray, str, list]:
  """One composed string of lengths[0] to lengths[1] digits: (image, its digits as text, their boxes)."""
  chosen = rng.integers(0, len(images), rng.integers(lengths[0], lengths[1] + 1))
  image, boxes = compose(images[chosen], SPACINGS[spacing], rng)
  if rendering == "paper":
    image = on_paper(image, rng)
  return image, "".join(str(int(d)) for d in labels[chosen]), boxes


def kind_of(index: int, paper: bool) -> tuple[str, str]:
  """String `index`'s spacing class and rendering: every combination equally often."""
  spacing = list(SPACINGS)[index % len(SPACINGS)]
  return spacing, RENDERINGS[(index // len(SPACINGS)) % 2] if paper else "black"


def find_strings(images: np.ndarray, labels: np.ndarray, probabilities_fn: read_number.ProbabilitiesFn, *,
                 count: int, seed: int, paper: bool, lengths: tuple[int, int] = LENGTHS,
                 stream: tuple[int, ...] = (), context_fn: read_number.ContextFn | None = None) -> list[dict]:
  """Composes `count` strings and finds their candidate digits (the networks' part, done once): one record
  each with its image, truth and `read_number.Candidates`."""
  strings = []
  for index in range(count):
    spacing, rendering = kind_of(index, paper)
    rng = np.random.default_rng([seed, index, *stream])
    image, truth, boxes = make_string(images, labels, rng, spacing, rendering, lengths=lengths)
    strings.append({"index": index, "spacing": spacing, "rendering": rendering, "truth": truth,
                    "image": image, "true_boxes": boxes,
                    "candidates": read_number.find_candidates(image, probabilities_fn, context_fn)})
  return strings


def aspect_table(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(10, 2): mean and standard deviation of log(width / height) of each class's ink box (pixels above
  0.45 of white), as `read_number.DIGIT_ASPECT`."""
  ink = images > 0.45 * 255
  rows, cols = ink.any(axis=2), ink.any(axis=1)
  height = rows.shape[1] - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1)
  width = cols.shape[1] - cols[:, ::-1].argmax(axis=1) - cols.argmax(axis=1)
  log_aspect = np.log(width / height)
  return np.array([(log_aspect[labels == c].mean(), log_aspect[labels == c].std()) for c in range(10)])


def interval(right: int, count: int, confidence: float = 0.95) -> list[float]:
  """Wilson's interval for the accuracy of `count` strings of which `right` were read right: with 150
  strings per group one string is 0.67 points, and the interval is 4 (near 100%) to 16 (near 50%) points
  wide."""
  ci = scipy.stats.binomtest(int(right), int(count)).proportion_ci(confidence, method="wilson")
  return [float(ci.low), float(ci.high)]


def summary(records: list[dict], threshold: float) -> dict:
  """Whole-string and per-digit accuracy per spacing class and rendering, and the flagged strings."""
  groups = {"all": records}
  for key in ("spacing", "rendering"):
    for value in sorted({r[key] for r in records}):
      groups[value] = [r for r in records if r[key] == value]
  for length in sorted({r["length"] for r in records}):
    for spacing in ("", *SPACINGS):
      for rendering in ("", *RENDERINGS):
        name = " ".join(part for part in (f"{length} digits", spacing, rendering) if part)
        groups[name] = [r for r in records if r["length"] == length and spacing in {"", r["spacing"]}
                        and rendering in {"", r["rendering"]}]
  table = {name: {"strings": len(rs), "string_accuracy": float(np.mean([r["right"] for r in rs])),
                  "interval": interval(sum(r["right"] for r in rs), len(rs)),
                  "digit_accuracy": 1.0 - sum(r["edits"] for r in rs) / sum(len(r["truth"]) for r in rs)}
           for name, rs in groups.items() if rs}
  kept = [r["right"] for r in records if r["weakest"] >= threshold]
  return {"groups": table, "threshold": threshold, "flagged": len(records) - len(kept),
          "unflagged_accuracy": float(np.mean(kept)) if kept else None}


def draw_worst(records: list[dict], path: str, count: int = 10) -> None:
  """The most confident mistakes, each with its truth, its reading and the digits' boxes."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  from matplotlib import patches  # noqa: PLC0415
  from matplotlib import pyplot as plt  # noqa: PLC0415

  wrong = sorted((r for r in records if not r["right"]), key=lambda r: -r["confidence"])[:count]
  if not wrong:
    return
  figure, axes = plt.subplots(len(wrong), 1, figsize=(8, 1.4 * len(wrong)), squeeze=False)
  for axis, record in zip(axes[:, 0], wrong, strict=True):
    axis.imshow(record["image"], cmap="gray")
    for x, y, w, h in record["boxes"]:
      axis.add_patch(patches.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="red", linewidth=0.8))
    axis.set_title(f"#{record['index']} {record['spacing']}/{record['rendering']}: truth {record['truth']}, "
                   f"read {record['text']} (confidence {record['confidence']:.3f})", fontsize=8)
    axis.axis("off")
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def split_arrays(split: input_pipeline.Split) -> tuple[np.ndarray, np.ndarray]:
  keep = np.asarray(split.mask) > 0
  return np.asarray(split.images)[keep][..., 0], np.asarray(split.labels)[keep]


def print_table(result: dict) -> None:
  """Every group; per length only the whole group where there are several lengths (all in results.json)."""
  several = len({name.split(" digits")[0] for name in result["groups"] if " digits" in name}) > 1
  for name, row in result["groups"].items():
    if several and " digits " in name:
      continue
    low, high = row["interval"]
    print(f"{name:>26}: {row['string_accuracy']:7.2%} of {row['strings']:4d} strings ({low:.1%}-{high:.1%}), "
          f"{row['digit_accuracy']:7.2%} of digits")
  accuracy = result["unflagged_accuracy"]
  print(f"threshold {result['threshold']:.4f} (picked on validation): {result['flagged']} flagged uncertain, "
        f"the others {'-' if accuracy is None else f'{accuracy:.2%}'} right")


def define_flags() -> None:
  cli.define_trained_run()
  flags.DEFINE_integer("count", 400, "Test strings (and as many validation strings for the threshold).")
  flags.DEFINE_integer("seed", 0, "Every string is composed from default_rng([seed, index]).")
  flags.DEFINE_integer("min_length", LENGTHS[0], "Fewest digits in a string.")
  flags.DEFINE_integer("max_length", LENGTHS[1], "Most digits in a string.")
  flags.DEFINE_bool("paper", False, "Render every other group of strings as dark ink on lit paper (JPEG).")
  flags.DEFINE_float("target", 0.95, "Accuracy of the unflagged validation strings the threshold aims at.")
  flags.DEFINE_bool("fit_priors", False, "Fit read_number's priors on the validation strings (printed), and "
                    "read the test strings with them instead of read_number.PRIORS.")
  flags.DEFINE_bool("fit_verifier", False, "Fit the run's number reader (a verifier of whole digits, the "
                    "priors on top of it and the uncertainty threshold) on the validation strings, store it "
                    "in WORKDIR/number_reader.json and read the test strings with it.")
  flags.DEFINE_bool("verifier", True, "Read with the run's stored number reader where it has one.")
  flags.DEFINE_bool("context", True, "With --fit_verifier: fit the reader on top of the run's context "
                    "verifier where one is stored (experiments.train_context_verifier).")
  flags.DEFINE_bool("aspect_table", False, "Print read_number.DIGIT_ASPECT measured on the training split, "
                    "and stop.")
  flags.DEFINE_bool("known_length", False, "Also read every test string as exactly as many digits as it has "
                    "(a field of known length: read_number(..., length=N)) and report that table too.")
  flags.DEFINE_string("out", "", "Folder for results.json and worst.png (default WORKDIR/number_strings).")


def main(argv: list[str]) -> None:
  del argv
  cli.quiet_libraries()
  config = trained_run.load_config(FLAGS.workdir)
  splits = input_pipeline.load_mnist(config.data, config.eval_batch_size)
  if FLAGS.aspect_table:
    shards = [split_arrays(shard) for shard in splits["train"]]
    images, labels = (np.concatenate(parts) for parts in zip(*shards, strict=True))
    table = np.round(aspect_table(images, labels), 3).tolist()
    print(f"DIGIT_ASPECT over {len(labels):,} training digits: {table}")
    return
  predictor = predict.load_predictor(FLAGS.workdir, FLAGS.checkpoint, FLAGS.weights)
  reader = None
  if FLAGS.verifier and not FLAGS.fit_verifier:
    reader = number_reader.load(FLAGS.workdir, predictor.weights, predictor.checkpoint_step)
  features = FLAGS.fit_verifier or reader is not None
  probabilities_fn = read_number.predictor_probabilities(predictor, features=features)
  lengths = (FLAGS.min_length, FLAGS.max_length)
  with_context = (reader.context if reader is not None
                  else FLAGS.fit_verifier and FLAGS.context and context_verifier.exists(FLAGS.workdir))
  context_fn = context_verifier.stored_candidate_logits(FLAGS.workdir) if with_context else None
  settings = dict(count=FLAGS.count, seed=FLAGS.seed, paper=FLAGS.paper, lengths=lengths,
                  context_fn=context_fn)
  validation_strings = find_strings(*split_arrays(splits["validation"]), probabilities_fn,
                                    stream=(VALIDATION_STREAM,), **settings)
  priors = read_number.PRIORS if reader is None else reader.priors
  if FLAGS.fit_verifier:
    reader, report = fit_reader(validation_strings, FLAGS.target)
    path = number_reader.store(FLAGS.workdir, predictor.weights, predictor.checkpoint_step, reader, report)
    priors = reader.priors
    print(f"number reader fitted on {len(validation_strings)} validation strings in "
          f"{report['seconds']:.0f} s (l2 {report['l2']:g}), stored in {path}: {priors}, "
          f"threshold {reader.uncertain_below:.4f}")
  elif FLAGS.fit_priors:
    priors = fit_priors(validation_strings, priors, verifier=reader)
    print(f"fitted on {len(validation_strings)} validation strings: {priors}")
  threshold = pick_threshold(read_strings(validation_strings, priors, reader), FLAGS.target)
  test_strings = find_strings(*split_arrays(splits["test"]), probabilities_fn, **settings)
  test = read_strings(test_strings, priors, reader)
  result = summary(test, threshold)
  result["failures"] = number_failures.diagnose(test_strings, test, priors, reader)
  if FLAGS.known_length:
    result["known_length"] = summary(read_strings(test_strings, priors, reader, known_length=True), threshold)
  out = FLAGS.out or os.path.join(FLAGS.workdir, "number_strings")
  os.makedirs(out, exist_ok=True)
  draw_worst(test, os.path.join(out, "worst.png"))
  result.update(workdir=FLAGS.workdir, checkpoint_step=predictor.checkpoint_step, count=FLAGS.count,
                seed=FLAGS.seed, lengths=list(lengths), paper=FLAGS.paper, target=FLAGS.target,
                priors=dataclasses.asdict(priors), verifier=reader is not None, context=with_context)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  print_table(result)
  number_failures.print_failures(result["failures"])
  if FLAGS.known_length:
    print("each string read as exactly as many digits as it has (read_number(..., length=N)):")
    print_table(result["known_length"])
  print(f"results.json and worst.png in {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
