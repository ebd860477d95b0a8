"""The multi-seed benchmark on a tiny budget: per-seed numbers are the runs' own, the aggregate is their
mean and spread, and the reproducibility check (the first seed retrained in another process) matches."""

import json
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import calibration, trained_run
from alexnet_jax.training import metric_logging
from experiments import benchmark, environment
from tests.conftest import REPO_ROOT, final_calibration

pytestmark = pytest.mark.slow  # subprocesses training on the real MNIST files



def test_benchmark_seeds_aggregate_and_reproducibility(tmp_path, mnist_data_dir):
  root = tmp_path / "bench"
  completed = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--config", "configs/smoke.py", "--seeds", "2",
       "--jobs", "2", "--root", str(root), "--nothroughput", "--target", "0.2",
       "--target_metric", "val_accuracy",
       f"--config.data.data_dir={mnist_data_dir}", "--config.num_train_steps=20",
       "--config.eval_every_steps=10", "--config.checkpoint_every_steps=10"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
  result = json.loads((root / "benchmark.json").read_text())
  assert result["seeds"] == [0, 1]
  finals = {seed: metric_logging.read_metrics(str(root / f"seed_{seed}"))[-1] for seed in (0, 1)}
  for seed, final in finals.items():
    assert result["per_seed"][str(seed)]["test_accuracy"] == final["test_accuracy"]
    assert result["per_seed"][str(seed)]["params_sha256"] == final["params_sha256"]
  accuracies = [finals[s]["test_accuracy"] for s in (0, 1)]
  assert result["aggregate"]["test_accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
  assert result["aggregate"]["test_accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
  assert finals[0]["params_sha256"] != finals[1]["params_sha256"]
  assert result["reproducibility"]["result"] == "match"
  assert result["reproducibility"]["repeat"] == finals[0]["params_sha256"]
  assert result["environment"]["versions"]["jax"] and result["environment"]["cpu_model"]
  page = (root / "benchmark.md").read_text()
  assert "## Reproducibility: **match**" in page and "Software: Python" in page
  # The ensemble: the mean of the two runs' calibrated probabilities, computed here independently.
  members = [trained_run.load(str(root / f"seed_{seed}"), "latest") for seed in (0, 1)]
  stored = {seed: final_calibration(root / f"seed_{seed}") for seed in (0, 1)}
  assert all(m.temperature == stored[s]["temperature"] for s, m in enumerate(members))
  test = input_pipeline.load_mnist(members[0].config.data, 500)["test"]
  mean = np.mean([calibration.softmax(m.split_logits(test, 500)[0], m.temperature) for m in members], 0)
  labels = np.asarray(test.labels)[np.asarray(test.mask) > 0]
  assert result["ensemble"]["count"] == 10000
  assert result["ensemble"]["test_accuracy"] == np.mean(mean.argmax(1) == labels)
  assert (root / "ensemble_report" / "report.md").exists() and "## Ensemble of the 2 seeds" in page
  for seed in (0, 1):
    assert result["per_seed"][str(seed)]["test_ece_calibrated"] == stored[seed]["test_ece_after"]


def test_benchmark_short_reproducibility_check(tmp_path, mnist_data_dir):
  """--reproducibility_steps=N: the first N steps of the first seed, twice, in two processes; and
  --tta_radius: the seed evaluated with test-time augmentation beside its one-view accuracy."""
  root = tmp_path / "bench"
  completed = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--config", "configs/smoke.py", "--seeds", "1",
       "--jobs", "2", "--root", str(root), "--nothroughput", "--reproducibility_steps", "6", "--tta_radius=1",
       f"--config.data.data_dir={mnist_data_dir}", "--config.num_train_steps=12",
       "--config.eval_every_steps=6", "--config.checkpoint_every_steps=6"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
  result = json.loads((root / "benchmark.json").read_text())
  a, b = (metric_logging.read_metrics(str(root / "reproducibility_6" / n))[-1] for n in ("a", "b"))
  assert a["step"] == b["step"] == 6
  assert result["reproducibility"] == {"result": "match", "first": a["params_sha256"],
                                       "repeat": b["params_sha256"], "steps": 6}
  assert "ensemble" not in result and not (root / "repeat_seed_0").exists()
  page = (root / "benchmark.md").read_text()
  assert "The first 6 steps of seed 0 trained twice" in page
  final = metric_logging.read_metrics(str(root / "seed_0"))[-1]
  report = json.loads((root / "seed_0" / "report_tta1" / "metrics.json").read_text())
  seed = result["tta"]["per_seed"]["0"]
  assert seed["test_accuracy"] == report["accuracy"]
  assert seed["test_accuracy_single_view"] == pytest.approx(final["test_accuracy"], abs=1e-9)
  assert report["tta_views"] == result["tta"]["views"] == 9 and "ensemble" not in result["tta"]
  assert "## Test-time augmentation: 9 views shifted by up to 1 px" in page


def test_a_negative_tta_radius_is_refused_before_any_training(tmp_path):
  completed = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--config", "configs/smoke.py", "--seeds", "1",
       "--root", str(tmp_path / "bench"), "--nothroughput", "--tta_radius=-1"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode != 0
  assert "--tta_radius=-1: expected 0 (off) or more pixels" in completed.stderr
  assert not (tmp_path / "bench").exists()


def test_reproducibility_reports_a_mismatch():
  assert benchmark.reproducibility({"params_sha256": "a"}, {"params_sha256": "b"})["result"] == "mismatch"


def test_reproducibility_names_different_library_versions():
  """Different bits from different jax versions are expected; from the same versions they are a failure."""
  old = {"python": "3.11.7", "jax": "0.10.2", "onednn": "3.2.0"}
  new = {"python": "3.11.7", "jax": "0.12.1", "onednn": "3.2.0"}
  result = benchmark.reproducibility({"params_sha256": "a", "library_versions": old},
                                     {"params_sha256": "b", "library_versions": new})
  assert result["result"] == "different library versions"
  assert result["differing"] == {"jax": ["0.10.2", "0.12.1"]}
  same = benchmark.reproducibility({"params_sha256": "a", "library_versions": old},
                                   {"params_sha256": "b", "library_versions": dict(old)})
  assert same["result"] == "mismatch"
  matching = benchmark.reproducibility({"params_sha256": "a", "library_versions": old},
                                       {"params_sha256": "a", "library_versions": new})
  assert matching["result"] == "match"


def test_environment_fingerprint_names_the_stack():
  env = environment.describe()
  assert {"jax", "jaxlib", "flax", "optax"} <= set(env["versions"])
  assert env["device_count"] >= 1 and env["device_kind"] and "xla_flags" in env
  assert "XLA_FLAGS" in environment.markdown(env)
