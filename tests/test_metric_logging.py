"""metrics.jsonl: append, read back, drop records past a resumed checkpoint."""

import json
import logging
import os

import pytest

from alexnet_jax.training import metric_logging


def test_write_read_and_truncate(tmp_path):
  writer = metric_logging.MetricWriter(str(tmp_path))
  for step in (10, 20, 30):
    record = writer.write(step, step / 100, train_loss=1.0 / step, note="x")
    assert record == {"step": step, "epoch": step / 100, "train_loss": 1.0 / step, "note": "x"}
  writer.close()
  assert [r["step"] for r in metric_logging.read_metrics(str(tmp_path))] == [10, 20, 30]
  metric_logging.truncate_metrics(str(tmp_path), 20)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [10, 20]
  assert list((tmp_path / "tensorboard").iterdir()), "TensorBoard event file written"


def test_disabled_writer_returns_records_but_writes_nothing(tmp_path):
  writer = metric_logging.MetricWriter(str(tmp_path), enabled=False)
  assert writer.write(1, 0.5, loss=2.0)["loss"] == 2.0
  assert not (tmp_path / "metrics.jsonl").exists()
  metric_logging.truncate_metrics(str(tmp_path), 0)  # no file: nothing to do
  assert metric_logging.read_metrics(str(tmp_path)) == []


def test_a_torn_last_line_is_dropped_with_a_warning_and_truncation_removes_it(tmp_path, caplog):
  """A kill while a record was being written leaves its line cut short: the run still resumes."""
  good = [json.dumps({"step": s, "epoch": 0.0, "loss": 1.0}) + "\n" for s in (10, 20)]
  (tmp_path / "metrics.jsonl").write_text("".join(good) + '{"step": 30, "epo')
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in metric_logging.read_metrics(str(tmp_path))] == [10, 20]
  assert any("cut short" in r.getMessage() for r in caplog.records)
  metric_logging.truncate_metrics(str(tmp_path), 20)
  assert (tmp_path / "metrics.jsonl").read_text() == "".join(good)


def test_damage_before_the_last_line_is_named(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 10}\n{"ste\n{"step": 30}\n')
  with pytest.raises(metric_logging.MetricsError, match=r"metrics.jsonl, line 2: not a JSON record"):
    metric_logging.read_metrics(str(tmp_path))


class _DiskFullHalfway:
  """A file whose write stores half of what it is given, then fails as a full disk would."""

  def __init__(self, file):
    self._file = file

  def write(self, text):
    self._file.write(text[:len(text) // 2])
    self._file.flush()
    raise OSError(28, "No space left on device")

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._file.close()


def test_an_atomic_write_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch):
  path = tmp_path / "config.json"
  path.write_text('{"old": true}')
  real_fdopen = os.fdopen
  monkeypatch.setattr(os, "fdopen", lambda *a, **k: _DiskFullHalfway(real_fdopen(*a, **k)))
  with pytest.raises(OSError, match="No space left"):
    metric_logging.write_atomically(str(path), json.dumps({"new": list(range(1000))}))
  assert path.read_text() == '{"old": true}'
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_the_first_rate_and_eta_leave_the_compiling_dispatch_out(monkeypatch, caplog):
  """A run whose first step compiles for 10 s, then takes 0.1 s a step: the first line's rate and ETA are
  the steps' own (what the loop gets by calling start() after the first dispatch)."""
  clock = iter([0.0, 10.0, 14.9, 19.9])  # created, started after step 1, logged at steps 50 and 100
  monkeypatch.setattr(metric_logging.time, "perf_counter", lambda: next(clock))
  progress = metric_logging.ProgressLine(total_steps=1000, batch_size=128, first_step=0)
  progress.start(1)
  with caplog.at_level(logging.INFO):
    first = progress.report(50, 0.1, 2.0, 0.5)
  assert first == pytest.approx(49 * 128 / 4.9)  # not 50 * 128 / 14.9, a third of it
  assert "ETA 1m35s" in caplog.records[-1].getMessage()  # 950 steps at 0.1 s
  assert progress.report(100, 0.2, 1.0, 0.6) == pytest.approx(50 * 128 / 5.0)
