"""Whole runs through the CLI, in separate processes: same seed same bits, resume after SIGKILL or
SIGTERM equal to an uninterrupted run, and fallback past a corrupt latest checkpoint."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from alexnet_jax.training import loop, metric_logging
from tests.compilation_cache import without_compilation_cache
from tests.conftest import REPO_ROOT, saved_steps

pytestmark = pytest.mark.slow  # subprocesses training on the real MNIST files

STEPS = 120
OVERRIDES = (f"--config.num_train_steps={STEPS}", "--config.checkpoint_every_steps=10",
             "--config.eval_every_steps=60", "--config.log_every_steps=10")


def _command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "alexnet_jax.main", "--config", "configs/smoke.py",
          "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *OVERRIDES, *extra]


def _run(workdir, data_dir, *extra, convolutions: str = "onednn", independent: bool = False) -> str:
  """`convolutions`: the implementation the run must report (the smoke config's `auto` is oneDNN here:
  its extension builds on every x86-64 Linux with g++, which CI installs). `independent`: the process
  compiles every program itself instead of loading the session's cached ones (conftest.py)."""
  env = without_compilation_cache() if independent else None
  result = subprocess.run(_command(workdir, data_dir, *extra), cwd=REPO_ROOT, capture_output=True,
                          check=False, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"convolutions by {convolutions}" in result.stderr
  return _fingerprint(workdir)


def _fingerprint(workdir) -> str | None:
  records = metric_logging.read_metrics(str(workdir))
  return records[-1].get("params_sha256") if records else None




def _start_and_interrupt(workdir, data_dir, sig, after_step) -> tuple[int, str]:
  """Starts a run and sends `sig` once a checkpoint at or past `after_step` is on disk."""
  process = subprocess.Popen(_command(workdir, data_dir), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and process.poll() is None:
    if any(step >= after_step for step in saved_steps(workdir)):
      process.send_signal(sig)
      break
    time.sleep(0.02)
  output, _ = process.communicate(timeout=300)
  return process.returncode, output


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_data_dir) -> tuple[pathlib.Path, str]:
  """One uninterrupted run: its workdir and params_sha256."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  return workdir, _run(workdir, mnist_data_dir, independent=True)


def test_same_seed_same_bits_in_another_process(reference, tmp_path, mnist_data_dir):
  _, expected = reference
  assert _run(tmp_path / "again", mnist_data_dir, independent=True) == expected


def test_same_seed_same_bits_with_xlas_convolutions(tmp_path, mnist_data_dir):
  # 30 steps (the overrides after OVERRIDES win): XLA's convolutions train the smoke network slower.
  shorter = ("--config.num_train_steps=30", "--config.eval_every_steps=30")
  runs = [_run(tmp_path / name, mnist_data_dir, "--config.model.conv_impl=xla", *shorter, convolutions="xla",
               independent=True)
          for name in ("first", "second")]
  assert runs[0] == runs[1] and runs[0] is not None


def test_another_seed_other_bits(reference, tmp_path, mnist_data_dir):
  _, expected = reference
  assert _run(tmp_path / "seed1", mnist_data_dir, "--config.seed=1") != expected


def test_sigkill_then_resume_gives_the_uninterrupted_bits(reference, tmp_path, mnist_data_dir):
  _, expected = reference
  workdir = tmp_path / "killed"
  returncode, _ = _start_and_interrupt(workdir, mnist_data_dir, signal.SIGKILL, after_step=STEPS // 2)
  assert returncode == -signal.SIGKILL
  assert _fingerprint(workdir) is None, "the run must have been killed before finishing"
  assert _run(workdir, mnist_data_dir) == expected
  steps = [r["step"] for r in metric_logging.read_metrics(str(workdir)) if "train_loss" in r]
  assert steps == sorted(set(steps)), "records after the resumed checkpoint were dropped, not repeated"


def test_sigterm_saves_then_exits_and_resumes_exactly(reference, tmp_path, mnist_data_dir):
  _, expected = reference
  workdir = tmp_path / "terminated"
  returncode, output = _start_and_interrupt(workdir, mnist_data_dir, signal.SIGTERM, after_step=20)
  assert returncode == loop.PREEMPTED_EXIT_CODE, output[-2000:]
  assert "SIGTERM: saved the checkpoint" in output
  saved = saved_steps(workdir)
  assert saved and saved[-1] < STEPS, saved
  assert _run(workdir, mnist_data_dir) == expected


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(reference, tmp_path, mnist_data_dir):
  source, expected = reference
  workdir = tmp_path / "corrupt"
  shutil.copytree(source, workdir)
  steps = saved_steps(workdir)
  latest = workdir / "checkpoints" / str(steps[-1])
  for path in latest.rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and "manifest" in path.name:
      path.write_bytes(b"\0" * 8)
  for path in (latest / "default").rglob("*"):
    if path.is_file() and os.path.getsize(path) > 1000:
      with open(path, "r+b") as f:
        f.truncate(100)
  # Unfinished: killed after its last checkpoint was written, before its final record (a finished run is
  # reported as such without restoring anything).
  metric_logging.truncate_metrics(str(workdir), steps[-1] - 1)
  result = subprocess.run(_command(workdir, mnist_data_dir), cwd=REPO_ROOT, capture_output=True, check=False,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoint at step {steps[-1]} is damaged" in result.stderr
  assert (workdir / "corrupt_checkpoints").exists(), "the damaged checkpoint is kept aside, not deleted"
  assert _fingerprint(workdir) == expected


def _kill_while_saving(workdir, data_dir, after_step: int, offset_s: float) -> tuple[int, bool]:
  """Starts a run and SIGKILLs it `offset_s` after Orbax starts writing a checkpoint past `after_step`
  (its temporary folder appears); returns the exit status and whether the temporary folder was still
  there when the process died (the write was cut, not finished)."""
  process = subprocess.Popen(_command(workdir, data_dir), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  checkpoints = pathlib.Path(workdir) / "checkpoints"
  deadline, cut = time.monotonic() + 300, False
  while time.monotonic() < deadline and process.poll() is None:
    writing = [p for p in (checkpoints.iterdir() if checkpoints.exists() else ())
               if ".orbax-checkpoint-tmp" in p.name and int(p.name.split(".")[0]) > after_step]
    if writing:
      time.sleep(offset_s)
      process.kill()
      process.wait(timeout=60)
      cut = writing[0].exists()
      break
    time.sleep(0.001)
  process.wait(timeout=300)
  return process.returncode, cut


@pytest.mark.parametrize("offset_ms", [0, 3, 15])
def test_sigkill_inside_a_checkpoint_write_resumes_to_the_uninterrupted_bits(reference, tmp_path,
                                                                             mnist_data_dir, offset_ms):
  """Killed while Orbax writes a checkpoint: the partial write is never taken for a checkpoint, and the
  resumed run ends on the uninterrupted run's bits."""
  _, expected = reference
  workdir = tmp_path / "killed_in_save"
  returncode, cut = _kill_while_saving(workdir, mnist_data_dir, after_step=STEPS // 4,
                                       offset_s=offset_ms / 1000)
  assert returncode == -signal.SIGKILL
  if offset_ms == 0:
    assert cut, "the kill must land inside the write"
  assert all(p.name.isdigit() or ".orbax-checkpoint-tmp" in p.name
             for p in (workdir / "checkpoints").iterdir())
  assert _run(workdir, mnist_data_dir) == expected
  assert not (workdir / "corrupt_checkpoints").exists(), "a cut write is not a damaged checkpoint"
