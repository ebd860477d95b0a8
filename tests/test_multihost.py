"""Two processes on localhost through jax.distributed (CPU, gloo) train like one process with two
devices on the same global batches, and resume together from their checkpoint after being killed.

The comparison is bit for bit, because it holds by construction on one machine: with `data.num_shards=2`
both runs see the same global batches, each device runs the same per-device program on the same 16
examples, and the gradient all-reduce adds two values, which gives the same bits in either order. (Runs
over different device counts are compared to float tolerance instead: tests/test_parallel.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alexnet_jax.training import metric_logging
from tests.conftest import REPO_ROOT, free_port, saved_steps, train_losses

pytestmark = pytest.mark.slow  # subprocesses training on the real MNIST files

STEPS = 40
OVERRIDES = (f"--config.num_train_steps={STEPS}", "--config.eval_every_steps=20",
             "--config.checkpoint_every_steps=10", "--config.log_every_steps=10",
             "--config.data.num_shards=2")


def _command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "alexnet_jax.main", "--config", "configs/smoke.py",
          "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *OVERRIDES, *extra]




def _start_pair(workdir, data_dir) -> list[subprocess.Popen]:
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return [subprocess.Popen(
      _command(workdir, data_dir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
               f"--process_id={i}"),
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]






def test_two_processes_match_one_process_with_two_devices_and_resume(tmp_path, mnist_data_dir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  single = subprocess.run(_command(tmp_path / "single", mnist_data_dir), cwd=REPO_ROOT, env=env,
                          capture_output=True, check=False, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  assert "convolutions by onednn" in single.stderr  # the custom call, per shard over a global mesh
  expected = metric_logging.read_metrics(str(tmp_path / "single"))

  # Two processes, killed together once a checkpoint past the middle is on disk ...
  workdir = tmp_path / "pair"
  processes = _start_pair(workdir, mnist_data_dir)
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and all(p.poll() is None for p in processes):
    if any(step >= STEPS // 2 for step in saved_steps(workdir)):
      break
    time.sleep(0.05)
  for process in processes:
    if process.poll() is None:
      process.send_signal(signal.SIGKILL)
  outputs = [p.communicate(timeout=120)[0] for p in processes]
  assert all(p.returncode == -signal.SIGKILL for p in processes), outputs[0][-3000:]
  assert "process 1 of 2" in outputs[1]

  # ... then started again: they resume from the checkpoint and finish.
  processes = _start_pair(workdir, mnist_data_dir)
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]
  assert "resumed from the checkpoint at step" in outputs[0]
  assert all("convolutions by onednn" in output for output in outputs)
  records = metric_logging.read_metrics(str(workdir))
  np.testing.assert_array_equal(train_losses(records), train_losses(expected))
  final, reference = records[-1], expected[-1]
  assert final["test_count"] == 10000 and final["val_count"] == 5000
  assert final["params_sha256"] == reference["params_sha256"]
