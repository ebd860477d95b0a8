"""Data parallelism on simulated CPU devices: one device, jit over 4 and pmap over 4 agree.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts, so each run is a
separate process through the CLI. Dropout is off because Flax draws dropout masks per device under pmap
(by design, from per-device keys); augmentation stays on, since every example gets its own key from the
global batch whichever device holds it. The runs differ only in the order of floating-point reductions.

Batch norm is off here: with it, those last-bit differences grow to about 1% (jit over 4) and 3% (pmap
over 4) of the training loss within 30 steps (measured), too loose to tell a bug from rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import metric_logging
from tests.conftest import REPO_ROOT

OVERRIDES = ("--config.num_train_steps=30", "--config.eval_every_steps=30", "--config.log_every_steps=5",
             "--config.checkpoint_every_steps=30", "--config.model.dropout_rate=0.0",
             "--config.data.augment=True",
             # SGD: its update is linear in the gradient, so reduction-order differences stay at float
             # level (Adam divides by the root of tiny second moments and amplifies them).
             "--config.optimizer=sgd", "--config.learning_rate=0.02")
# Float tolerances: the runs differ only in the order of floating-point reductions.
LOSS_RTOL = 1e-4
ACCURACY_ATOL = 0.0005  # at most 5 of 10,000 test images


def _run(workdir, data_dir, devices: int, parallelism: str) -> list[dict]:
  env = dict(os.environ)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  command = [sys.executable, "-m", "alexnet_jax.main", "--config", "configs/smoke.py",
             "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
             f"--config.parallelism={parallelism}", *OVERRIDES]
  result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, check=False, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"devices: {devices} x cpu, data-parallel by {parallelism}" in result.stderr
  return metric_logging.read_metrics(str(workdir))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_data_dir):
  root = tmp_path_factory.mktemp("parallel")
  return {name: _run(root / name, mnist_data_dir, devices, parallelism)
          for name, devices, parallelism in [("one", 1, "jit"), ("jit4", 4, "jit"), ("pmap4", 4, "pmap")]}


def _losses(records):
  return np.array([r["train_loss"] for r in records if "train_loss" in r])


@pytest.mark.parametrize("name", ["jit4", "pmap4"])
def test_four_devices_agree_with_one(runs, name):
  reference, other = runs["one"], runs[name]
  np.testing.assert_allclose(_losses(other), _losses(reference), rtol=LOSS_RTOL)
  final, expected = other[-1], reference[-1]
  for key in ("val_accuracy", "test_accuracy"):
    assert abs(final[key] - expected[key]) <= ACCURACY_ATOL, (key, final[key], expected[key])
  np.testing.assert_allclose(final["test_loss"], expected["test_loss"], rtol=LOSS_RTOL)


@pytest.mark.parametrize("name", ["one", "jit4", "pmap4"])
def test_every_example_is_evaluated_exactly_once(runs, name):
  final = runs[name][-1]
  assert final["test_count"] == 10000 and final["val_count"] == 5000
