"""A sweep of two variants x two seeds on a tiny budget: runs end to end, survives an interruption, and
its table's numbers are the runs' own."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alexnet_jax.training import metric_logging
from experiments import ablate, runs
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # subprocesses training on the real MNIST files

TINY_SWEEP = '''
BASE_CONFIG = "configs/smoke.py"
BASELINE = "baseline"
TARGET_TRAIN_ACCURACY = 0.2
VARIANTS = {"baseline": {}, "no_dropout": {"model.dropout_rate": 0.0}}
'''


def _command(sweep_file, root, data_dir):
  return [sys.executable, "-m", "experiments.ablate", str(sweep_file), "--seeds", "2", "--jobs", "2",
          "--root", str(root), f"--config.data.data_dir={data_dir}", "--config.num_train_steps=100",
          "--config.eval_every_steps=50", "--config.checkpoint_every_steps=10", "--config.log_every_steps=5"]


def _wait_for(predicate, timeout_s):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if predicate():
      return True
    time.sleep(0.5)
  return False


def test_sweep_runs_resumes_and_reports_the_runs_numbers(tmp_path, mnist_data_dir):
  sweep_file = tmp_path / "tiny.py"
  sweep_file.write_text(TINY_SWEEP)
  root = tmp_path / "sweeps"
  sweep_dir = root / "tiny"
  command = _command(sweep_file, root, mnist_data_dir)

  # Two trainings at a time; interrupt once the third run has saved its first checkpoint (step 10 of 100).
  first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
  interrupted_run = sweep_dir / "no_dropout" / "seed_0"
  try:
    assert _wait_for((interrupted_run / "checkpoints" / "10").is_dir, 300), "no checkpoint at 10"
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=120)
  finally:
    first.kill()
  assert first.returncode != 0, output
  assert "rerun to resume" in output
  finished_before = {d: (sweep_dir / d / "metrics.jsonl").stat().st_mtime
                     for d in ("baseline/seed_0", "baseline/seed_1", "no_dropout/seed_0")
                     if runs.final_record(str(sweep_dir / d))}
  assert "baseline/seed_0" in finished_before and "no_dropout/seed_0" not in finished_before

  rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert f"{len(finished_before)} of 4 runs already finished" in rerun.stdout
  for run, mtime in finished_before.items():  # not trained again
    assert (sweep_dir / run / "metrics.jsonl").stat().st_mtime == mtime
  assert "resumed from the checkpoint" in (interrupted_run / "train.log").read_text()

  with open(sweep_dir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["variant"], r["seed"]) for r in rows] == [
      ("baseline", "0"), ("baseline", "1"), ("no_dropout", "0"), ("no_dropout", "1")]
  for row in rows:
    final = metric_logging.read_metrics(row["workdir"])[-1]
    assert float(row["test_accuracy"]) == final["test_accuracy"]
    assert float(row["val_accuracy"]) == final["val_accuracy"]
    assert int(row["steps"]) == final["step"] == 100
    assert row["params_sha256"] == final["params_sha256"]
  page = (sweep_dir / "results.md").read_text()
  for variant in ("baseline", "no_dropout"):
    accuracies = [float(r["test_accuracy"]) for r in rows if r["variant"] == variant]
    mean, std = 100 * np.mean(accuracies), 100 * np.std(accuracies, ddof=1)
    assert f"| `{variant}` | {mean:.2f} +- {std:.2f} |" in page
  assert (sweep_dir / "results.png").stat().st_size > 0

  # Rebuilding the results from the finished runs gives the same page.
  again = subprocess.run([*command, "--results_only"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
  assert again.returncode == 0 and (sweep_dir / "results.md").read_text() == page


def test_unknown_sweep_and_malformed_sweep_are_named(tmp_path):
  with pytest.raises(ablate.SweepError, match="no sweep named 'nope'; available: alexnet_paper"):
    ablate.load_sweep("nope")
  bad = tmp_path / "bad.py"
  bad.write_text('BASE_CONFIG = "configs/smoke.py"\nVARIANTS = {"a": {}}\nBASELINE = "b"\n'
                 "TARGET_TRAIN_ACCURACY = 0.9\n")
  with pytest.raises(ablate.SweepError, match="BASELINE 'b' is not one of its VARIANTS"):
    ablate.load_sweep(str(bad))


def test_shipped_sweeps_load_and_name_real_config_fields():
  from configs import default  # noqa: PLC0415

  names = sorted(f[:-3] for f in os.listdir(os.path.join(REPO_ROOT, "experiments", "sweeps"))
                 if f.endswith(".py") and not f.startswith("_"))
  assert {"alexnet_paper", "optimizers", "capacity", "recipe"} <= set(names)
  for name in names:
    sweep = ablate.load_sweep(name)
    for fields in sweep.VARIANTS.values():
      for field in fields:
        node = default.get_config()
        for part in field.split("."):
          node = node[part]  # raises KeyError for a field the config does not have
