"""Training runs as separate processes, and what a finished run left in its workdir.

Sweeps and benchmarks launch `python -m alexnet_jax.main` once per run, so every run is exactly the
command a user would type (same config parsing, same checks, same automatic resume) and runs in a fresh
process (no compilation cache or memory shared between runs; one failing run cannot take others down).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from alexnet_jax.inference import calibration, trained_run
from alexnet_jax.model import alexnet, summary
from alexnet_jax.training import metric_logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_overrides(fields: dict[str, Any]) -> list[str]:
  """{"model.activation": "tanh"} -> ["--config.model.activation=tanh"]."""
  return [f"--config.{name}={value}" for name, value in fields.items()]


def split_config_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the --config.FIELD=VALUE arguments, everything else): the former go to every training, verbatim."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  return overrides, [argv[0], *(a for a in argv[1:] if not a.startswith("--config."))]


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run: a config file, command-line overrides, a workdir."""

  name: str
  workdir: str
  config_path: str
  overrides: tuple[str, ...] = ()

  def command(self) -> list[str]:
    return [sys.executable, "-m", "alexnet_jax.main", "--config", self.config_path,
            "--workdir", self.workdir, *self.overrides]

  @property
  def log_path(self) -> str:
    return os.path.join(self.workdir, "train.log")


def final_record(workdir: str) -> dict[str, Any] | None:
  """The run's last metrics record if the run finished (it carries params_sha256), else None."""
  records = metric_logging.read_metrics(workdir) if os.path.isdir(workdir) else []
  return records[-1] if records and "params_sha256" in records[-1] else None


class RunPool:
  """Runs specs, at most `jobs` at a time, skipping finished ones. SIGTERM or Ctrl-C is passed on to the
  running trainings (each saves a checkpoint and exits), so the next invocation resumes them."""

  def __init__(self, jobs: int = 1):
    self.jobs = jobs
    self._children: set[subprocess.Popen] = set()
    self._lock = threading.Lock()
    self._stopping = False

  def _run_one(self, spec: RunSpec) -> int:
    os.makedirs(spec.workdir, exist_ok=True)
    with self._lock:
      if self._stopping:
        return -signal.SIGTERM
      with open(spec.log_path, "a") as log:
        child = subprocess.Popen(spec.command(), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
      self._children.add(child)
    code = child.wait()
    with self._lock:
      self._children.discard(child)
    status = "finished" if code == 0 else f"exit status {code}, log: {spec.log_path}"
    print(f"  {spec.name}: {status}", flush=True)
    return code

  def _stop(self, signum, frame) -> None:
    del frame
    with self._lock:
      self._stopping = True
      for child in self._children:
        child.send_signal(signal.SIGTERM)
    print(f"signal {signum}: stopping the running trainings (they save a checkpoint); rerun to resume",
          flush=True)

  def run(self, specs: Sequence[RunSpec]) -> dict[str, int]:
    """Exit status per run name (0 for runs that had already finished)."""
    todo = [s for s in specs if final_record(s.workdir) is None]
    print(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; running {len(todo)} "
          f"({self.jobs} at a time)", flush=True)
    previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
        codes = dict(zip([s.name for s in todo], pool.map(self._run_one, todo), strict=True))
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
    if self._stopping:
      raise KeyboardInterrupt("interrupted; finished runs are kept and unfinished ones resume on rerun")
    return {s.name: codes.get(s.name, 0) for s in specs}


def first_reaching(records: list[dict[str, Any]], key: str, target: float) -> dict[str, Any] | None:
  return next((r for r in records if r.get(key, -1.0) >= target), None)


def summarize_run(workdir: str, target: float, target_metric: str = "train_accuracy") -> dict[str, Any]:
  """The numbers a results table needs, read from the run's own files (metrics.jsonl, config.json,
  calibration.json).

  Steps and time to target: the first record whose `target_metric` (train_accuracy: the running mean
  over a logging interval; val_accuracy or test_accuracy: a full evaluation) reached `target`.
  """
  records = metric_logging.read_metrics(workdir)
  final = records[-1]
  config = trained_run.load_config(workdir)
  train_records = [r for r in records if "train_accuracy" in r]
  reached = first_reaching(records, target_metric, target)
  rows = summary.layer_table(alexnet.create_model(config.model))
  # The calibration stage's entry for the checkpoint training ended on, of the run's model.
  calibrated = calibration.read_entries(workdir).get(
      calibration.entry_key(trained_run.resolve_weights(config, "auto"), final["step"]), {})
  # The first logged interval includes compilation: leave it out of the throughput.
  throughput = [r["images_per_s"] for r in train_records[1:]] or [train_records[0]["images_per_s"]]
  return {
      "test_accuracy": final["test_accuracy"],
      "val_accuracy": final.get("val_accuracy", float("nan")),
      "test_loss": final["test_loss"],
      "steps": final["step"],
      "train_time_s": final["elapsed_s"],
      "steps_to_target": reached["step"] if reached else None,
      "time_to_target_s": reached["elapsed_s"] if reached else None,
      "train_images_per_s": float(np.median(throughput)),
      "params": sum(r.params for r in rows),
      "mflops_per_image": sum(r.flops for r in rows) / 1e6,
      "train_images": final["step"] * config.batch_size,
      "params_sha256": final["params_sha256"],
      "library_versions": final.get("library_versions"),  # absent in runs trained before it was recorded
      # With a moving average of the weights the plain figures are the average's; these the weights'.
      "raw_test_accuracy": final.get("raw_test_accuracy"),
      "raw_val_accuracy": final.get("raw_val_accuracy"),
      # Calibration (inference/calibration.py): the temperature fitted on validation, test ECE both ways.
      "temperature": calibrated.get("temperature"),
      "test_ece": calibrated.get("test_ece_before"),
      "test_ece_calibrated": calibrated.get("test_ece_after"),
  }
