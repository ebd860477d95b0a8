"""The pictures of `alexnet_jax.explain` and their markdown page (matplotlib, no display needed)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from alexnet_jax.analysis.report_plots import plt, save_figure

CHANNELS_SHOWN = 8


def filters_plot(path: str, filters: np.ndarray) -> None:
  """conv1's filters as a grid, each on a symmetric scale: red positive, blue negative weights."""
  count = len(filters)
  columns = int(np.ceil(np.sqrt(count)))
  rows = int(np.ceil(count / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 0.9))
  for i, ax in enumerate(np.ravel(axes)):
    ax.axis("off")
    if i < count:
      limit = np.abs(filters[i]).max() or 1.0
      ax.imshow(filters[i], cmap="RdBu_r", vmin=-limit, vmax=limit)
  fig.suptitle(f"conv1: {count} learned {filters.shape[1]}x{filters.shape[2]} filters")
  save_figure(fig, path)


def feature_maps_plot(path: str, image: np.ndarray, maps: dict[str, np.ndarray]) -> None:
  """The digit, then per stage its most active channels, each row labelled with the stage's shape."""
  fig, axes = plt.subplots(len(maps), CHANNELS_SHOWN + 1, figsize=(CHANNELS_SHOWN + 1, len(maps) * 1.05))
  for row, (name, values) in zip(axes, maps.items(), strict=True):
    for ax in row:
      ax.set_xticks([])
      ax.set_yticks([])
    row[0].imshow(image[..., 0], cmap="gray")
    height, width, channels = values.shape
    row[0].set_ylabel(f"{name}\n{height}x{width}x{channels}", rotation=0, ha="right", va="center",
                      fontsize=7)
    top = np.argsort(-values.mean(axis=(0, 1)), kind="stable")[:CHANNELS_SHOWN]
    for ax, channel in zip(row[1:], top, strict=False):
      ax.imshow(values[..., channel], cmap="magma")
      ax.set_title(f"ch {channel}", fontsize=6)
  fig.suptitle("Feature maps of one digit, most active channels first")
  save_figure(fig, path)


def attributions_plot(path: str, result: dict[str, Any]) -> None:
  """Per digit: the image, saliency, integrated gradients and occlusion sensitivity."""
  columns = ("image", "saliency", "integrated_gradients", "occlusion")
  count = len(result["images"])
  fig, axes = plt.subplots(count, len(columns), figsize=(len(columns) * 1.6, count * 1.6))
  axes = np.atleast_2d(axes)
  for i in range(count):
    label = "" if result["labels"] is None else f"true {result['labels'][i]}, "
    for ax, column in zip(axes[i], columns, strict=True):
      ax.set_xticks([])
      ax.set_yticks([])
      if column == "image":
        ax.imshow(result["images"][i][..., 0], cmap="gray")
        ax.set_ylabel(f"{label}said {result['predicted'][i]}", fontsize=7)
      else:
        values = result[column][i]
        limit = np.abs(values).max() or 1.0
        ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
      if i == 0:
        ax.set_title(column.replace("_", " "), fontsize=8)
  fig.suptitle("Why it answered: red supports the answer, blue speaks against it", fontsize=9)
  save_figure(fig, path, rect=(0, 0, 1, 1 - 0.25 / count))  # 0.4 inch for the title above the headings


def pca_plot(path: str, coordinates: np.ndarray, labels: np.ndarray, wrong: np.ndarray,
             explained: np.ndarray) -> None:
  fig, ax = plt.subplots(figsize=(7, 6))
  scatter = ax.scatter(coordinates[:, 0], coordinates[:, 1], c=labels, cmap="tab10", s=2, alpha=0.5)
  ax.scatter(coordinates[wrong, 0], coordinates[wrong, 1], marker="x", c="black", s=18,
             label=f"misclassified ({int(wrong.sum())})")
  ax.set(xlabel=f"PC 1 ({explained[0]:.0%} of variance)", ylabel=f"PC 2 ({explained[1]:.0%})",
         title="Penultimate-layer features of the test set, first two principal components")
  ax.legend(loc="upper right")
  fig.colorbar(scatter, ax=ax, ticks=range(10), label="true class")
  save_figure(fig, path)


def write_all(out: str, result: dict[str, Any]) -> None:
  filters_plot(os.path.join(out, "filters.png"), result["filters"])
  feature_maps_plot(os.path.join(out, "feature_maps.png"), result["images"][0], result["feature_maps"])
  attributions_plot(os.path.join(out, "attributions.png"), result)
  pictures = ["filters.png", "feature_maps.png", "attributions.png"]
  if "pca" in result:
    pca_plot(os.path.join(out, "pca.png"), result["pca"], result["pca_labels"], result["pca_wrong"],
             result["pca_explained"])
    pictures.append("pca.png")
  lines = ["# Inside the network", ""]
  for name, predicted in zip(result["names"], result["predicted"], strict=True):
    lines.append(f"- {name}: predicted {predicted}")
  lines.append("")
  lines += [f"![{p[:-4]}]({p})" for p in pictures]
  with open(os.path.join(out, "explain.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
