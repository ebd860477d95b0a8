"""Sweep statistics against independent computations."""

import math

import numpy as np
import pytest

from experiments import sweep_results


def _row(variant, seed, test, steps_to_target=None):
  return {"variant": variant, "seed": seed, "test_accuracy": test, "val_accuracy": test - 0.001,
          "steps_to_target": steps_to_target, "time_to_target_s": None if steps_to_target is None else 1.0,
          "train_time_s": 10.0, "train_images_per_s": 100.0, "params": 5, "mflops_per_image": 1.0,
          "overrides": "" if variant == "base" else "--config.x=1"}


def _welch_by_hand(a, b):
  """Welch's t and Welch-Satterthwaite degrees of freedom, then the t distribution's two-sided tail."""
  from scipy.special import stdtr  # noqa: PLC0415 - the Student t CDF itself, not the test

  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
  dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return 2 * stdtr(dof, -abs(t))


def test_statistics_and_welch_p_value():
  base, other = [0.990, 0.992, 0.991], [0.985, 0.987, 0.980, 0.984]
  rows = ([_row("base", s, a, 100) for s, a in enumerate(base)]
          + [_row("other", s, a, 200 if s else None) for s, a in enumerate(other)])
  table = sweep_results.variant_statistics(rows, "base")
  assert [e["variant"] for e in table] == ["base", "other"]
  entry = table[1]
  assert entry["runs"] == 4 and entry["reached_target"] == 3
  assert entry["test_mean"] == pytest.approx(np.mean(other))
  assert entry["test_std"] == pytest.approx(np.std(other, ddof=1))
  assert (entry["test_min"], entry["test_max"]) == (0.980, 0.987)
  assert entry["delta_test"] == pytest.approx(np.mean(other) - np.mean(base))
  assert entry["p_value"] == pytest.approx(_welch_by_hand(np.array(other), np.array(base)), rel=1e-9)
  assert entry["steps_to_target_mean"] == 200
  assert "delta_test" not in table[0]


def test_p_value_undefined_for_one_run_or_no_spread():
  assert math.isnan(sweep_results.welch_p_value(np.array([0.9]), np.array([0.8, 0.7])))
  assert math.isnan(sweep_results.welch_p_value(np.array([0.9, 0.9]), np.array([0.9, 0.9])))


def test_markdown_and_plot(tmp_path):
  rows = [_row("base", 0, 0.99, 10), _row("base", 1, 0.98, 12), _row("other", 0, 0.97)]
  table = sweep_results.variant_statistics(rows, "base")
  page = sweep_results.markdown(table, "demo", 0.95, "base", extra_overrides=["--config.a=1"], seeds=[0, 1])
  assert "| `base` | 98.50 +- 0.71 | 98.00 | 99.00 |" in page
  assert "| `other` | 97.00 +- n/a |" in page and "-1.50" in page
  assert "n/a (0/1)" in page and "11 (2/2)" in page
  sweep_results.plot(str(tmp_path / "r.png"), rows, table, 0.95)
  assert (tmp_path / "r.png").stat().st_size > 0
  sweep_results.write_csv(str(tmp_path / "r.csv"), rows)
  assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("variant,seed,test_accuracy")


def test_training_arithmetic_and_the_cost_plot(tmp_path):
  """3 x forward FLOPs x images trained; one line per width, whatever the variants' order."""
  rows = [{**_row("narrow_long", 0, 0.99), "train_images": 2_000_000, "mflops_per_image": 20.0},
          {**_row("wide", 0, 0.99), "train_images": 1_000_000, "mflops_per_image": 250.0},
          {**_row("narrow_short", 0, 0.98), "train_images": 1_000_000, "mflops_per_image": 20.0}]
  table = sweep_results.variant_statistics(rows, "wide")
  assert [e["train_tflop"] for e in table] == pytest.approx([120, 750, 60])
  assert math.isnan(sweep_results.training_tflop(_row("old", 0, 0.9)))  # summarised before it was recorded
  curves = {"narrow_long": 0.25, "narrow_short": 0.25, "wide": 1.0}
  sweep_results.plot_cost(str(tmp_path / "cost.png"), rows, table, curves, "model.width_multiplier",
                          references={"published": (500.0, [0.99, 0.991])})
  assert (tmp_path / "cost.png").stat().st_size > 0


def test_without_baseline_runs_no_variant_is_called_the_baseline():
  table = sweep_results.variant_statistics([_row("other", 0, 0.99)], "base")
  page = sweep_results.markdown(table, "demo", 0.95, "base", extra_overrides=[], seeds=[0])
  assert "(baseline)" not in page and "n/a (no baseline runs)" in page
