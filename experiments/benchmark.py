"""Reproducible multi-seed benchmark of one config:

  python -m experiments.benchmark --config configs/default.py [--seeds N] [--root DIR] [--jobs J]
      [--target 0.99] [--target_metric val_accuracy] [--torch] [--tta_radius R] [--config.FIELD=VALUE ...]

1. Throughput (experiments/throughput.py): training and evaluation images/s of the project's steps after
   compilation, compile times, peak memory; with --torch, the PyTorch reference beside them.
2. N seeds of the config, each a full training in ROOT/seed_S (`python -m alexnet_jax.main`; finished runs
   are reused, interrupted ones resumed): mean +- std of test accuracy, training time, steps and time to
   the target accuracy.
3. The ensemble of the seeds' final checkpoints (alexnet_jax.evaluate over every seed's workdir: mean of
   their calibrated probabilities) on the test split, beside the per-seed figures; ROOT/ensemble_report/.
   With --tta_radius R, each seed and the ensemble again with test-time augmentation
   (alexnet_jax/inference/test_time_augmentation.py), beside their one-view figures; reports in
   ROOT/seed_S/report_ttaR/ and ROOT/ensemble_report_ttaR/.
4. Reproducibility: the first seed trained again in a separate process (ROOT/repeat_seed_S); its
   params_sha256 is compared with the first run's: match, mismatch, or different library versions (the
   runs recorded different versions of the libraries that decide the bits). With --reproducibility_steps=N,
   instead, the first seed's first N steps trained twice, in two processes (ROOT/reproducibility_N/a, b):
   the same property (each step is a pure function of the previous state and the seed) for N steps' cost.

Writes ROOT/benchmark.json and ROOT/benchmark.md, both with a description of the hardware and software
(experiments/environment.py).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.analysis import evaluate
from experiments import environment, runs, throughput

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a program: experiment modules import one another and define flags of their own."""
  cli.define_config()
  flags.DEFINE_integer("seeds", 3, "Seeds: first_seed, first_seed + 1, ...")
  flags.DEFINE_integer("first_seed", 0, "The first seed.")
  flags.DEFINE_string("root", "runs/benchmark", "Where the runs and the results go.")
  flags.DEFINE_integer("jobs", 1, "Trainings at a time (1 for clean timings).")
  flags.DEFINE_float("target", 0.99, "Target accuracy for steps / time to target.")
  flags.DEFINE_enum("target_metric", "val_accuracy", ["train_accuracy", "val_accuracy", "test_accuracy"],
                    "Which logged accuracy must reach the target (val/test: at each evaluation).")
  flags.DEFINE_bool("throughput", True, "Measure step throughput in this process first.")
  flags.DEFINE_bool("torch", False, "Include the PyTorch reference in the throughput (`bench` extra).")
  flags.DEFINE_integer("throughput_steps", 20, "Timed steps per repeat for the throughput.")
  flags.DEFINE_integer("reproducibility_steps", -1, "-1: retrain the first seed whole in a second process "
                       "and compare; N > 0: train its first N steps twice, in two processes, and compare.")
  flags.DEFINE_bool("ensemble", True, "Evaluate the ensemble of the seeds' final checkpoints.")
  flags.DEFINE_integer("tta_radius", 0, "Also evaluate each seed (and the ensemble) with test-time "
                       "augmentation over shifts of up to this many pixels; 0 = off.")


def _mean_std(values: list[float | None]) -> dict[str, float | int]:
  present = np.array([v for v in values if v is not None], np.float64)
  if not len(present):
    return {"mean": None, "std": None, "n": 0}
  return {"mean": float(present.mean()), "std": float(present.std(ddof=1)) if len(present) > 1 else None,
          "n": int(len(present))}


def reproducibility(first: dict[str, Any], repeat: dict[str, Any]) -> dict[str, Any]:
  """match, mismatch, or "different library versions" when the fingerprints differ and so do the recorded
  versions of the libraries that decide the bits (then a difference is expected, not a failure)."""
  result = {"first": first["params_sha256"], "repeat": repeat["params_sha256"]}
  if first["params_sha256"] == repeat["params_sha256"]:
    return {"result": "match", **result}
  versions = first.get("library_versions"), repeat.get("library_versions")
  if None not in versions and versions[0] != versions[1]:
    differing = sorted(k for k in {*versions[0], *versions[1]} if versions[0].get(k) != versions[1].get(k))
    return {"result": "different library versions", "differing": {
        k: [versions[0].get(k), versions[1].get(k)] for k in differing}, **result}
  return {"result": "mismatch", **result}


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
  rows = list(per_seed.values())
  result = {key: _mean_std([r.get(key) for r in rows]) for key in (
      "test_accuracy", "val_accuracy", "train_time_s", "steps_to_target", "time_to_target_s",
      "train_images_per_s", "test_ece", "test_ece_calibrated")}
  for key in ("test_accuracy", "train_time_s"):
    values = [r[key] for r in rows]
    result[key].update(min=min(values), max=max(values))
  return result


def ensemble(workdirs: list[str], report_dir: str) -> dict[str, Any]:
  """The seeds' final checkpoints as one ensemble on the test split (see alexnet_jax/evaluate.py)."""
  metrics = evaluate.evaluate_runs(workdirs, "latest", "test", with_robustness=False, report_dir=report_dir)
  return {"members": len(workdirs), "test_accuracy": metrics["accuracy"], "count": metrics["count"],
          "test_ece": metrics["expected_calibration_error"],
          "test_ece_uncalibrated": metrics["expected_calibration_error_uncalibrated"],
          "report_dir": report_dir}


def test_time_augmentation(workdirs: dict[int, str], radius: int, root: str, with_ensemble: bool
                           ) -> dict[str, Any]:
  """Each seed's final checkpoint, and their ensemble, evaluated on the test split with test-time
  augmentation of `radius` (see alexnet_jax/evaluate.py): accuracies with it and with one view."""
  evaluated = {seed: evaluate.evaluate_runs([workdir], "latest", "test", with_robustness=False,
                                            report_dir=os.path.join(workdir, f"report_tta{radius}"),
                                            tta_radius=radius)
               for seed, workdir in workdirs.items()}
  per_seed = {seed: {"test_accuracy": m["accuracy"], "test_accuracy_single_view": m["accuracy_single_view"]}
              for seed, m in evaluated.items()}
  accuracies = [row["test_accuracy"] for row in per_seed.values()]
  result = {"radius": radius, "views": next(iter(evaluated.values()))["tta_views"], "per_seed": per_seed,
            "test_accuracy": {**_mean_std(accuracies), "min": min(accuracies), "max": max(accuracies)}}
  if with_ensemble and len(workdirs) > 1:
    metrics = evaluate.evaluate_runs(list(workdirs.values()), "latest", "test", with_robustness=False,
                                     report_dir=os.path.join(root, f"ensemble_report_tta{radius}"),
                                     tta_radius=radius)
    result["ensemble"] = {"test_accuracy": metrics["accuracy"],
                          "test_accuracy_single_view": metrics["accuracy_single_view"]}
  return result


def _tta_markdown(tta: dict[str, Any]) -> list[str]:
  lines = ["", f"## Test-time augmentation: {tta['views']} views shifted by up to {tta['radius']} px", "",
           "| seed | test accuracy, one view | with test-time augmentation |", "|---:|---:|---:|"]
  lines += [f"| {seed} | {100 * r['test_accuracy_single_view']:.2f} | {100 * r['test_accuracy']:.2f} |"
            for seed, r in tta["per_seed"].items()]
  if "ensemble" in tta:
    e = tta["ensemble"]
    lines.append(f"| ensemble | {100 * e['test_accuracy_single_view']:.2f} | "
                 f"{100 * e['test_accuracy']:.2f} |")
  acc = tta["test_accuracy"]
  lines += ["", f"Seeds with test-time augmentation: {_fmt(acc, 100, 2)}, min {100 * acc['min']:.2f}, "
            f"max {100 * acc['max']:.2f}."]
  return lines


def _fmt(stat: dict[str, Any], scale: float = 1.0, digits: int = 0) -> str:
  if stat["mean"] is None:
    return "not reached"
  std = "n/a" if stat["std"] is None else f"{scale * stat['std']:.{digits}f}"
  return f"{scale * stat['mean']:.{digits}f} +- {std} (n={stat['n']})"


def markdown(result: dict[str, Any]) -> str:
  agg, target = result["aggregate"], result["target"]
  lines = [f"# Benchmark: `{result['config_path']}` {' '.join(result['overrides'])}", "",
           environment.markdown(result["environment"]), ""]
  if result.get("throughput"):
    jax32 = result["throughput"]["jax"]["float32"]
    lines += ["## Throughput (after compilation)", "", result["throughput"]["table"], "",
              f"Compile time (float32): train step {jax32['train_compile_s']:.1f} s, eval step "
              f"{jax32['eval_compile_s']:.1f} s. Peak host memory of the benchmark process: "
              f"{jax32['host_peak_rss_mib']:,.0f} MiB.", ""]
  lines += [f"## Training, seeds {result['seeds']}", "",
            "| quantity | mean +- std |", "|---|---:|",
            f"| test accuracy (%) | {_fmt(agg['test_accuracy'], 100, 2)} |",
            f"| test accuracy, min / max (%) | {100 * agg['test_accuracy']['min']:.2f} / "
            f"{100 * agg['test_accuracy']['max']:.2f} |",
            f"| test calibration error, raw softmax | {_fmt(agg['test_ece'], 1, 4)} |",
            f"| test calibration error, calibrated | {_fmt(agg['test_ece_calibrated'], 1, 4)} |",
            f"| validation accuracy (%) | {_fmt(agg['val_accuracy'], 100, 2)} |",
            f"| training time (s) | {_fmt(agg['train_time_s'])}; max {agg['train_time_s']['max']:.0f} |",
            f"| steps to {target['metric']} >= {target['value']} | {_fmt(agg['steps_to_target'])} |",
            f"| time to {target['metric']} >= {target['value']} (s) | {_fmt(agg['time_to_target_s'])} |",
            f"| training images/s (in the loop) | {_fmt(agg['train_images_per_s'])} |", "",
            "| seed | test accuracy | val accuracy | test ECE (calibrated) | steps | training time (s) "
            "| params_sha256 |", "|---:|---:|---:|---:|---:|---:|---|"]
  for seed, r in result["per_seed"].items():
    ece = "n/a" if r.get("test_ece_calibrated") is None else f"{r['test_ece_calibrated']:.4f}"
    lines.append(f"| {seed} | {100 * r['test_accuracy']:.2f} | {100 * r['val_accuracy']:.2f} | {ece} | "
                 f"{r['steps']} | {r['train_time_s']:.0f} | `{r['params_sha256'][:16]}` |")
  if result.get("ensemble"):
    e = result["ensemble"]
    lines += ["", f"## Ensemble of the {e['members']} seeds", "",
              f"Mean of their calibrated probabilities, final checkpoints: test accuracy "
              f"**{100 * e['test_accuracy']:.2f}%** over {e['count']:,} images; calibration error "
              f"{e['test_ece']:.4f} (raw softmax {e['test_ece_uncalibrated']:.4f}). Report: "
              f"`{e['report_dir']}`."]
  if result.get("tta"):
    lines += _tta_markdown(result["tta"])
  repro = result["reproducibility"]
  what = (f"Seed {result['seeds'][0]} trained twice in separate processes" if not repro.get("steps") else
          f"The first {repro['steps']} steps of seed {result['seeds'][0]} trained twice in separate "
          "processes")
  lines += ["", f"## Reproducibility: **{repro['result']}**", "",
            f"{what}: params_sha256 `{repro['first']}` and `{repro['repeat']}`.", ""]
  if repro.get("differing"):
    lines += ["Libraries that differ between the two: " + ", ".join(
        f"{k} {a} and {b}" for k, (a, b) in repro["differing"].items()) + ".", ""]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.tta_radius < 0:  # refused before hours of training, not after
    sys.exit(f"error: --tta_radius={FLAGS.tta_radius}: expected 0 (off) or more pixels")
  config_path = flags.FLAGS["config"].config_filename
  overrides = runs.split_config_arguments(sys.argv)[0]
  root = os.path.abspath(FLAGS.root)
  os.makedirs(root, exist_ok=True)
  result: dict[str, Any] = {"config_path": config_path, "overrides": overrides,
                            "environment": environment.describe(),
                            "target": {"metric": FLAGS.target_metric, "value": FLAGS.target}}
  if FLAGS.throughput:
    result["throughput"] = throughput.measure(FLAGS.config, FLAGS.throughput_steps, 3, FLAGS.torch)
    print(result["throughput"]["table"], flush=True)

  seeds = list(range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds))
  config_file = os.path.abspath(config_path)

  def spec(name: str, seed: int) -> runs.RunSpec:
    return runs.RunSpec(name, os.path.join(root, name), config_file,
                        (*overrides, f"--config.seed={seed}"))

  specs = [spec(f"seed_{s}", s) for s in seeds]
  steps = FLAGS.reproducibility_steps
  if steps > 0:  # two short runs, both new
    repeats = [runs.RunSpec(f"reproducibility_{steps}/{name}",
                            os.path.join(root, f"reproducibility_{steps}", name), config_file,
                            (*overrides, f"--config.seed={seeds[0]}", f"--config.num_train_steps={steps}"))
               for name in ("a", "b")]
    specs += repeats
  else:  # the first seed's own run, and a second one
    repeats = [specs[0], spec(f"repeat_seed_{seeds[0]}", seeds[0])]
    specs.append(repeats[1])
  try:
    codes = runs.RunPool(FLAGS.jobs).run(specs)
  except KeyboardInterrupt as e:
    sys.exit(f"{e}")
  failed = [name for name, code in codes.items() if code != 0]
  if failed:
    sys.exit(f"error: runs failed: {', '.join(failed)} (see their train.log)")

  summaries = {s.name: runs.summarize_run(s.workdir, FLAGS.target, FLAGS.target_metric) for s in specs}
  result["seeds"] = seeds
  result["per_seed"] = {seed: summaries[f"seed_{seed}"] for seed in seeds}
  result["aggregate"] = aggregate(result["per_seed"])
  result["reproducibility"] = reproducibility(summaries[repeats[0].name], summaries[repeats[1].name])
  if FLAGS.reproducibility_steps > 0:
    result["reproducibility"]["steps"] = FLAGS.reproducibility_steps
  if FLAGS.ensemble and len(seeds) > 1:
    result["ensemble"] = ensemble([os.path.join(root, f"seed_{s}") for s in seeds],
                                  os.path.join(root, "ensemble_report"))
  if FLAGS.tta_radius:
    result["tta"] = test_time_augmentation({s: os.path.join(root, f"seed_{s}") for s in seeds},
                                           FLAGS.tta_radius, root, FLAGS.ensemble)
  with open(os.path.join(root, "benchmark.json"), "w") as f:
    json.dump(result, f, indent=2)
  page = markdown(result)
  with open(os.path.join(root, "benchmark.md"), "w") as f:
    f.write(page)
  print(page, flush=True)
  print(f"results in {root}/benchmark.json and benchmark.md", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
