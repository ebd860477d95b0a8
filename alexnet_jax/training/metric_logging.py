"""Where a run's numbers go: `metrics.jsonl`, TensorBoard event files and a console progress line.

`metrics.jsonl` holds one JSON object per line, each with `step` and `epoch`. When a run resumes from a
checkpoint at step S, records past S (written after that checkpoint by the run that died) are dropped,
so the file always describes the one trajectory that the checkpoints continue.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any

from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EVENT_FILE_PREFIX = "events.out.tfevents."


class MetricsError(ValueError):
  """metrics.jsonl is damaged somewhere other than a torn last line."""


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, then renames it over `path`: a kill at any moment
  leaves either the old file or the new one, never half of one."""
  directory, name = os.path.split(os.path.abspath(path))
  handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(handle, "w") as f:
      f.write(text)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of a run's metrics.jsonl (an empty list if there is none).

  A last line cut short (a kill during its write: it has no newline and is not JSON) is dropped with a
  warning; the next truncate_metrics removes it from the file. Damage anywhere else is a MetricsError
  naming the line.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.readlines()
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError as e:
      if number == len(lines) and not line.endswith("\n"):
        logging.warning("%s: its last line was cut short (a run killed while writing it); ignoring it",
                        path)
        break
      raise MetricsError(f"{path}, line {number}: not a JSON record ({e})") from None
  return records


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops records with step > last_step (and a torn last line), atomically."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  records = [r for r in read_metrics(workdir) if r["step"] <= last_step]
  write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def _remove_event_files(directory: str) -> None:
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if name.startswith(EVENT_FILE_PREFIX):
        os.remove(os.path.join(directory, name))


class MetricWriter:
  """Appends records to metrics.jsonl and TensorBoard; a no-op except on process 0.

  TensorBoard's event files are derived from metrics.jsonl, the run's record of truth: a new writer
  replaces them with one fresh event file holding every record metrics.jsonl keeps. After a resume
  (metrics.jsonl cut back to the restored checkpoint) TensorBoard therefore shows each step once, as
  metrics.jsonl does, instead of the lost future and its replacement side by side.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._path = os.path.join(workdir, METRICS_FILE)
    self._summary_writer = None
    if enabled:
      # clu's writer brings TensorBoard's event format; imported here to keep the module light.
      from clu import metric_writers  # noqa: PLC0415

      tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIR)
      _remove_event_files(tensorboard_dir)
      self._summary_writer = metric_writers.SummaryWriter(tensorboard_dir)
      for record in read_metrics(workdir):
        self._write_scalars(record)

  def _write_scalars(self, record: dict[str, Any]) -> None:
    scalars = {k: v for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, (int, float))
               and not isinstance(v, bool) and math.isfinite(v)}
    if scalars:
      self._summary_writer.write_scalars(int(record["step"]), scalars)

  def write(self, step: int, epoch: float, **metrics: Any) -> dict[str, Any]:
    """Appends one record (on process 0) and returns it."""
    record = {"step": int(step), "epoch": round(float(epoch), 4), **metrics}
    if not self.enabled:
      return record
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")
    self._write_scalars(record)
    return record

  def flush(self) -> None:
    if self._summary_writer is not None:
      self._summary_writer.flush()

  def close(self) -> None:
    if self._summary_writer is not None:
      self._summary_writer.close()


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressLine:
  """Logs `step, epoch, loss, accuracy, images/s, ETA` every interval.

  The rate, and so the ETA of the remaining training steps, is measured from `start(step)`: the loop calls
  it once the first dispatch, which compiles the step, has finished, so that the first line's ETA is the
  steps' own and not the compiler's. Time spent outside training (`exclude`) is left out.
  """

  def __init__(self, total_steps: int, batch_size: int, first_step: int):
    self._total_steps = total_steps
    self._batch_size = batch_size
    self._last_step = first_step
    self._last_time = time.perf_counter()
    self.started = False

  def start(self, step: int) -> None:
    """Times from here: `step` steps are done."""
    self._last_step, self._last_time, self.started = step, time.perf_counter(), True

  def report(self, step: int, epoch: float, loss: float, accuracy: float) -> float:
    """Logs one line; returns the images/s since the previous report (or since `start`)."""
    now = time.perf_counter()
    images_per_s = (step - self._last_step) * self._batch_size / max(now - self._last_time, 1e-9)
    eta = (self._total_steps - step) * self._batch_size / max(images_per_s, 1e-9)
    logging.info("step %d/%d  epoch %.2f  loss %.4f  accuracy %.2f%%  %.1f img/s  ETA %s (training steps)",
                 step, self._total_steps, epoch, loss, 100 * accuracy, images_per_s,
                 _format_duration(eta))
    self._last_step, self._last_time, self.started = step, now, True
    return images_per_s

  def exclude(self, seconds: float) -> None:
    """Leaves time spent outside training (evaluation, checkpointing) out of the next rate."""
    self._last_time += seconds
