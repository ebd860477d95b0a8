"""A sweep's results: one row per run (results.csv), per-variant statistics against the baseline with
Welch's t-test (results.md) and plots (results.png; cost.png for a cost sweep)."""

from __future__ import annotations

import csv
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from alexnet_jax.analysis import report_plots  # noqa: E402

CSV_FIELDS = ("variant", "seed", "test_accuracy", "val_accuracy", "test_loss", "raw_test_accuracy",
              "raw_val_accuracy", "steps", "train_time_s", "steps_to_target", "time_to_target_s",
              "train_images_per_s", "params", "mflops_per_image", "train_images", "params_sha256",
              "overrides", "workdir")


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: row.get(k) for k in CSV_FIELDS})


def _values(rows: list[dict[str, Any]], key: str) -> np.ndarray:
  return np.array([r[key] for r in rows if r.get(key) is not None], np.float64)


def welch_p_value(a: np.ndarray, b: np.ndarray) -> float:
  """Two-sided Welch's t-test; nan where it is undefined (fewer than two runs, or no spread at all)."""
  if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
    return math.nan
  return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def variant_statistics(rows: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
  """Per variant, in first-seen order: mean, std (ddof=1), min and max of the accuracies, means of the
  costs, and the test-accuracy difference from the baseline with its Welch p-value."""
  variants = list(dict.fromkeys(r["variant"] for r in rows))
  by_variant = {v: [r for r in rows if r["variant"] == v] for v in variants}
  base_test = _values(by_variant.get(baseline, []), "test_accuracy")
  base_val = _values(by_variant.get(baseline, []), "val_accuracy")
  table = []
  for variant in variants:
    runs = by_variant[variant]
    test, val = _values(runs, "test_accuracy"), _values(runs, "val_accuracy")
    reached = _values(runs, "steps_to_target")
    entry = {
        "variant": variant, "runs": len(runs), "overrides": runs[0]["overrides"],
        "test_mean": test.mean(), "test_std": test.std(ddof=1) if len(test) > 1 else math.nan,
        "test_min": test.min(), "test_max": test.max(),
        "val_mean": val.mean(), "val_std": val.std(ddof=1) if len(val) > 1 else math.nan,
        "val_min": val.min(), "val_max": val.max(),
        "steps_to_target_mean": reached.mean() if len(reached) else math.nan,
        "reached_target": len(reached),
        "time_to_target_mean": _values(runs, "time_to_target_s").mean() if len(reached) else math.nan,
        "train_time_mean": _values(runs, "train_time_s").mean(),
        "images_per_s_mean": _values(runs, "train_images_per_s").mean(),
        "params": runs[0]["params"], "mflops_per_image": runs[0]["mflops_per_image"],
        "train_tflop": training_tflop(runs[0]),
    }
    raw_val = _values(runs, "raw_val_accuracy")  # runs with a moving average: their raw weights' figures
    if len(raw_val):
      entry["raw_val_mean"] = raw_val.mean()
      entry["raw_test_mean"] = _values(runs, "raw_test_accuracy").mean()
    if variant != baseline and len(base_test):
      entry["delta_test"] = entry["test_mean"] - base_test.mean()
      entry["p_value"] = welch_p_value(test, base_test)
      entry["delta_val"] = entry["val_mean"] - base_val.mean()
      entry["p_value_val"] = welch_p_value(val, base_val)
    table.append(entry)
  return table


def training_tflop(row: dict[str, Any]) -> float:
  """A run's training arithmetic in TFLOP: forward and backward, taken as three forward passes (the usual
  estimate: the backward pass computes two products per forward one), over every image trained; nan for
  runs summarised before `train_images` was recorded."""
  images = row.get("train_images")
  return math.nan if images is None else 3 * row["mflops_per_image"] * 1e6 * images / 1e12


def _no_delta(entry: dict[str, Any], baseline: str) -> str:
  return "(baseline)" if entry["variant"] == baseline else "n/a (no baseline runs)"


def _pct(x: float) -> str:
  return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def _num(x: float, fmt: str = ",.0f") -> str:
  return "n/a" if x is None or math.isnan(x) else format(x, fmt)


def markdown(table: list[dict[str, Any]], sweep_name: str, target: float, baseline: str, *,
             extra_overrides: list[str], seeds: list[int]) -> str:
  lines = [
      f"# Sweep `{sweep_name}`", "",
      f"Seeds {seeds}; overrides applied to every run: `{' '.join(extra_overrides) or '(none)'}`. "
      f"Accuracies in percent over all 10,000 test / all validation images (mean +- std over seeds, "
      f"sample std). Delta: mean test accuracy minus the baseline's (`{baseline}`), in points; p: Welch's "
      f"two-sided t-test on the per-seed test accuracies. Steps to target: first logged step whose running "
      f"training accuracy reached {100 * target:.0f}% (runs that reached it / runs). Choices are made on "
      f"validation: its own delta and p are in the second table.", "",
      "| variant | test acc | min | max | val acc | delta | p | steps to target | time to target (s) "
      "| train time (s) | train img/s | params | MFLOPs | training TFLOP |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for e in table:
    delta = f"{100 * e['delta_test']:+.2f}" if "delta_test" in e else _no_delta(e, baseline)
    p = _num(e.get("p_value", math.nan), ".3f") if "delta_test" in e else ""
    lines.append(
        f"| `{e['variant']}` | {_pct(e['test_mean'])} +- {_pct(e['test_std'])} | {_pct(e['test_min'])} | "
        f"{_pct(e['test_max'])} | {_pct(e['val_mean'])} +- {_pct(e['val_std'])} | {delta} | {p} | "
        f"{_num(e['steps_to_target_mean'])} ({e['reached_target']}/{e['runs']}) | "
        f"{_num(e['time_to_target_mean'])} | {_num(e['train_time_mean'])} | "
        f"{_num(e['images_per_s_mean'])} | {e['params']:,} | {e['mflops_per_image']:.1f} | "
        f"{_num(e['train_tflop'])} |")
  lines += ["", "On validation (what recipe choices are made on); raw: the same runs' weights without "
            "their moving average (where the run kept one):", "",
            "| variant | val acc | delta | p | raw-weights val acc | raw-weights test acc |",
            "|---|---:|---:|---:|---:|---:|"]
  for e in table:
    delta = f"{100 * e['delta_val']:+.2f}" if "delta_val" in e else _no_delta(e, baseline)
    p = _num(e.get("p_value_val", math.nan), ".3f") if "delta_val" in e else ""
    lines.append(f"| `{e['variant']}` | {_pct(e['val_mean'])} +- {_pct(e['val_std'])} | {delta} | {p} | "
                 f"{_pct(e.get('raw_val_mean', math.nan))} | {_pct(e.get('raw_test_mean', math.nan))} |")
  lines += ["", "Variants:", ""]
  lines += [f"- `{e['variant']}`: `{e['overrides'] or '(the base config)'}`" for e in table]
  lines += ["", "![results](results.png)", ""]
  return "\n".join(lines)


def plot(path: str, rows: list[dict[str, Any]], table: list[dict[str, Any]], target: float) -> None:
  variants = [e["variant"] for e in table]
  fig, (acc_ax, steps_ax) = plt.subplots(1, 2, figsize=(12, 0.5 * len(variants) + 2.5), sharey=True)
  for y, variant in enumerate(variants):
    runs = [r for r in rows if r["variant"] == variant]
    acc_ax.plot([100 * r["test_accuracy"] for r in runs], [y] * len(runs), "o", alpha=0.6, color="C0")
    steps = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
    steps_ax.plot(steps, [y] * len(steps), "o", alpha=0.6, color="C1")
  acc_ax.errorbar([100 * e["test_mean"] for e in table], range(len(variants)),
                  xerr=[100 * np.nan_to_num(e["test_std"]) for e in table], fmt="|k", capsize=4)
  acc_ax.set(yticks=range(len(variants)), yticklabels=variants, xlabel="test accuracy (%)",
             title="Test accuracy per seed (bar: mean +- std)")
  steps_ax.set(xlabel="steps", title=f"Steps to {100 * target:.0f}% training accuracy")
  for ax in (acc_ax, steps_ax):
    ax.grid(alpha=0.3)
  acc_ax.invert_yaxis()
  report_plots.save_figure(fig, path)


def plot_cost(path: str, rows: list[dict[str, Any]], table: list[dict[str, Any]], curves: dict[str, Any],
              curve_name: str, *, references: dict[str, tuple[float, list[float]]] | None = None) -> None:
  """Validation accuracy against training arithmetic (log axis), one line per value of `curves` (variant
  -> the value of `curve_name` it has, e.g. its width), in order of cost; dots: the seeds, bars: std.
  `references`: label -> (training TFLOP, validation accuracies per seed) of runs outside the sweep."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label, (tflop, accuracies) in (references or {}).items():
    values = 100 * np.asarray(accuracies)
    ax.errorbar([tflop], [values.mean()], yerr=[values.std(ddof=1) if len(values) > 1 else 0.0], fmt="s",
                capsize=3, color="grey", label=label)
    ax.plot([tflop] * len(values), values, ".", color="grey", alpha=0.4)
  for colour, value in enumerate(dict.fromkeys(curves.values())):
    entries = sorted((e for e in table if curves.get(e["variant"]) == value), key=lambda e: e["train_tflop"])
    if not entries:  # a value none of whose variants has finished
      continue
    ax.errorbar([e["train_tflop"] for e in entries], [100 * e["val_mean"] for e in entries],
                yerr=[100 * np.nan_to_num(e["val_std"]) for e in entries], fmt="-o", capsize=3,
                color=f"C{colour}", label=str(value))
    for e in entries:
      seeds = [100 * r["val_accuracy"] for r in rows if r["variant"] == e["variant"]]
      ax.plot([e["train_tflop"]] * len(seeds), seeds, ".", color=f"C{colour}", alpha=0.4)
  ax.set(xscale="log", xlabel="training arithmetic (TFLOP: 3 x forward FLOPs x images trained)",
         ylabel="validation accuracy (%)", title="Accuracy against training cost")
  ax.grid(alpha=0.3, which="both")
  ax.legend(title=curve_name, fontsize=8)
  report_plots.save_figure(fig, path)
