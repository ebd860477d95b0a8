"""metrics.jsonl: append, read back, drop records past a resumed checkpoint."""

import json

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
