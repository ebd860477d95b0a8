"""The pictures and the markdown page of an evaluation report (matplotlib, no display needed)."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only: no display on servers or in CI.
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax.analysis import classification_metrics  # noqa: E402

MISCLASSIFIED_SHOWN = 24


def save_figure(fig: plt.Figure, path: str, rect: tuple[float, float, float, float] | None = None) -> None:
  """Lays the figure out (inside `rect`, figure fractions, when a title needs room) and writes it."""
  fig.tight_layout(rect=rect)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def confusion_matrix_plot(path: str, confusion: np.ndarray) -> None:
  fig, ax = plt.subplots(figsize=(7, 6))
  image = ax.imshow(np.log1p(confusion), cmap="Blues")
  for (t, p), count in np.ndenumerate(confusion):
    ax.text(p, t, str(count), ha="center", va="center", fontsize=7,
            color="white" if confusion[t, p] > confusion.max() / 2 else "black")
  ax.set(xlabel="predicted", ylabel="true", xticks=range(len(confusion)), yticks=range(len(confusion)),
         title="Confusion matrix (colour: log(1 + count))")
  fig.colorbar(image, ax=ax)
  save_figure(fig, path)


def per_class_plot(path: str, per_class: dict[str, list[float]]) -> None:
  classes = np.arange(len(per_class["precision"]))
  fig, ax = plt.subplots(figsize=(8, 4))
  ax.bar(classes - 0.2, per_class["precision"], width=0.4, label="precision")
  ax.bar(classes + 0.2, per_class["recall"], width=0.4, label="recall")
  low = min(*per_class["precision"], *per_class["recall"])
  ax.set(xlabel="digit", xticks=classes, ylim=(max(0.0, low - 0.02), 1.0),
         title="Precision and recall per class")
  ax.legend(loc="lower right")
  save_figure(fig, path)


def learning_curves_plot(path: str, records: list[dict[str, Any]]) -> None:
  """Loss, and error rate (1 - accuracy) on a log axis: the range that matters on MNIST, 2% down to
  0.4%, would be one pixel row of a linear accuracy axis."""
  fig, (loss_ax, error_ax) = plt.subplots(1, 2, figsize=(11, 4))
  for prefix, style in (("train", "-"), ("val", "o-"), ("test", "s")):
    points = [r for r in records if f"{prefix}_loss" in r]
    if not points:
      continue
    steps = [r["step"] for r in points]
    loss_ax.plot(steps, [r[f"{prefix}_loss"] for r in points], style, label=prefix)
    # An error of 0 has no place on a log axis: drawn at half of one example's worth instead.
    errors = [max(1.0 - r[f"{prefix}_accuracy"], 0.5 / max(r.get(f"{prefix}_count", 10000), 1))
              for r in points]
    error_ax.plot(steps, errors, style, label=prefix)
  loss_ax.set(xlabel="step", ylabel="loss", yscale="log",
              title="Loss (train: as optimised, label smoothing included)")
  error_ax.set(xlabel="step", ylabel="error rate (1 - accuracy)", yscale="log", title="Error rate")
  error_ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(xmax=1.0))
  for ax in (loss_ax, error_ax):
    ax.grid(alpha=0.3)
    ax.legend()
  save_figure(fig, path)


def misclassified_plot(path: str, probabilities: np.ndarray, labels: np.ndarray,
                       images: np.ndarray) -> None:
  """The most confident mistakes, with true label, prediction and its probability."""
  predictions = probabilities.argmax(axis=1)
  wrong = np.flatnonzero(predictions != labels)
  wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]])][:MISCLASSIFIED_SHOWN]
  columns = 8
  rows = max(1, -(-len(wrong) // columns))
  fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.6), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, i in zip(axes.flat, wrong, strict=False):
    ax.imshow(images[i, :, :, 0], cmap="gray_r")
    ax.set_title(f"true {labels[i]}\npred {predictions[i]} ({probabilities[i, predictions[i]]:.2f})",
                 fontsize=7)
  fig.suptitle(f"Most confident mistakes ({len(np.flatnonzero(predictions != labels))} in all)")
  save_figure(fig, path)


def robustness_plot(path: str, curves: dict[str, list[dict[str, float]]], units: dict[str, str]) -> None:
  fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.2), sharey=True)
  for ax, (name, points) in zip(np.atleast_1d(axes), curves.items(), strict=True):
    ax.plot([p["strength"] for p in points], [100 * p["accuracy"] for p in points], "o-")
    ax.set(title=name, xlabel=units[name])
    ax.grid(alpha=0.3)
  np.atleast_1d(axes)[0].set_ylabel("test accuracy (%)")
  fig.suptitle("Where the network breaks: accuracy on all test images under damage")
  save_figure(fig, path)


def confused_pairs_plot(path: str, galleries: list[dict[str, Any]]) -> None:
  """Per confused pair, its digits and their saliency for the class the network answered."""
  shown = max((len(g["images"]) for g in galleries), default=1)
  fig, axes = plt.subplots(max(1, len(galleries)), 2 * shown,
                           figsize=(2 * shown * 0.95, 1.3 * len(galleries)), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for row, gallery in zip(axes, galleries, strict=False):
    row[0].set_title(f"true {gallery['true']} -> said {gallery['predicted']}", fontsize=7, loc="left")
    for k, (image, saliency) in enumerate(zip(gallery["images"], gallery["saliency"], strict=True)):
      row[2 * k].imshow(image[..., 0], cmap="gray")
      limit = np.abs(saliency).max() or 1.0
      row[2 * k + 1].imshow(saliency, cmap="RdBu_r", vmin=-limit, vmax=limit)
  fig.suptitle("Most confused pairs: each digit beside its saliency (red: pixels that raised the answer)",
               fontsize=8)
  save_figure(fig, path)


def reliability_plot(path: str, probabilities: np.ndarray, labels: np.ndarray,
                     uncalibrated: np.ndarray | None = None) -> None:
  """Accuracy against confidence per bin, before and after calibration: on the diagonal is calibrated.
  Beside it, how the examples spread over the bins (almost all sit in the top one on MNIST)."""
  fig, (ax, share_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
  ax.plot([0, 1], [0, 1], ":", color="gray", label="calibrated")
  curves = [("after calibration", probabilities, "o-")]
  if uncalibrated is not None:
    curves.insert(0, ("before (raw softmax)", uncalibrated, "s--"))
  for name, probs, style in curves:
    points = classification_metrics.calibration_bins(probs, labels)
    ax.plot([p["confidence"] for p in points], [p["accuracy"] for p in points], style, label=name)
    share_ax.plot([p["confidence"] for p in points], [p["share"] for p in points], style, label=name)
  ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
         title="Reliability diagram (15 bins)")
  share_ax.set(xlabel="confidence (top probability)", ylabel="share of examples", yscale="log",
               xlim=(0, 1), title="Examples per bin")
  for axis in (ax, share_ax):
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
  save_figure(fig, path)


def write_all(report_dir: str, metrics: dict[str, Any], records: list[dict[str, Any]], *,
              probabilities: np.ndarray, labels: np.ndarray, images: np.ndarray,
              galleries: list[dict[str, Any]] | None = None, units: dict[str, str] | None = None,
              uncalibrated: np.ndarray | None = None) -> None:
  confusion_matrix_plot(os.path.join(report_dir, "confusion_matrix.png"),
                        np.asarray(metrics["confusion_matrix"]))
  per_class_plot(os.path.join(report_dir, "per_class.png"), metrics["per_class"])
  reliability_plot(os.path.join(report_dir, "reliability.png"), probabilities, labels, uncalibrated)
  if records:  # an ensemble has no one learning curve
    learning_curves_plot(os.path.join(report_dir, "learning_curves.png"), records)
  misclassified_plot(os.path.join(report_dir, "misclassified.png"), probabilities, labels, images)
  if galleries:
    confused_pairs_plot(os.path.join(report_dir, "confused_pairs.png"), galleries)
  if "robustness" in metrics:
    robustness_plot(os.path.join(report_dir, "robustness.png"), metrics["robustness"], units or {})


def write_markdown(report_dir: str, metrics: dict[str, Any]) -> None:
  per_class = metrics["per_class"]
  members = metrics.get("ensemble", [])
  title = (f"ensemble of {len(members)} runs" if members else
           f"checkpoint step {metrics['checkpoint_step']}, {metrics.get('weights', 'raw')} weights")
  temperature = metrics.get("temperature")
  lines = [
      f"# Evaluation: {metrics['split']} split, {title}",
      "",
      f"- accuracy **{100 * metrics['accuracy']:.2f}%** over {metrics['count']:,} images; "
      f"loss {metrics['loss']:.4f}",
      f"- macro precision {metrics['macro']['precision']:.4f}, recall {metrics['macro']['recall']:.4f}, "
      f"F1 {metrics['macro']['f1']:.4f}",
      f"- expected calibration error {metrics['expected_calibration_error']:.4f} (raw softmax: "
      f"{metrics.get('expected_calibration_error_uncalibrated', float('nan')):.4f}"
      + (f"; temperature {temperature:.4f}, fitted on validation)" if temperature else ")"),
      "",
  ]
  if "tta_radius" in metrics:
    single_view = 100 * metrics["accuracy_single_view"]
    lines[-1:-1] = [f"- test-time augmentation: mean probabilities of {metrics['tta_views']} copies shifted "
                    f"by up to {metrics['tta_radius']} px; one view: {single_view:.2f}% (robustness below: "
                    "one view)"]
  if members:
    lines += ["| member | checkpoint | weights | temperature | accuracy |", "|---|---:|---|---:|---:|"]
    lines += [f"| {m['workdir']} | {m['checkpoint_step']} | {m['weights']} | "
              f"{m['temperature'] or float('nan'):.4f} | {100 * m['accuracy']:.2f}% |" for m in members]
    lines += [""]
  lines += [
      "| digit | precision | recall | F1 | support |",
      "|---:|---:|---:|---:|---:|",
  ]
  for k in range(len(per_class["precision"])):
    lines.append(f"| {k} | {per_class['precision'][k]:.4f} | {per_class['recall'][k]:.4f} | "
                 f"{per_class['f1'][k]:.4f} | {per_class['support'][k]} |")
  lines += ["", "Most confused pairs (true -> predicted):", "",
            "| true | predicted | count |", "|---:|---:|---:|"]
  lines += [f"| {c['true']} | {c['predicted']} | {c['count']} |" for c in metrics["most_confused"]]
  lines += ["", "![confusion matrix](confusion_matrix.png)", "", "![per class](per_class.png)", "",
            "![reliability](reliability.png)", ""]
  if not members:
    lines += ["![learning curves](learning_curves.png)", ""]
  lines += ["![misclassified](misclassified.png)", ""]
  if os.path.exists(os.path.join(report_dir, "confused_pairs.png")):
    lines += ["## Hard cases", "", "![confused pairs](confused_pairs.png)", ""]
  if "robustness" in metrics:
    lines += ["## Robustness: accuracy under damage", ""]
    for name, points in metrics["robustness"].items():
      lines += [f"| {name} | " + " | ".join(f"{p['strength']:g}" for p in points) + " |",
                "|---|" + "---:|" * len(points),
                "| accuracy (%) | " + " | ".join(f"{100 * p['accuracy']:.2f}" for p in points) + " |", ""]
    lines += ["![robustness](robustness.png)", ""]
  with open(os.path.join(report_dir, "report.md"), "w") as f:
    f.write("\n".join(lines))
