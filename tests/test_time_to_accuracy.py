"""experiments/time_to_accuracy.py: it follows the training loop's trajectory, reports when a target was
first reached, and runs from an .npz export on a host without TensorFlow."""

import numpy as np
import pytest

from alexnet_jax.data import input_pipeline
from alexnet_jax.training import metric_logging
from experiments import time_to_accuracy


def _quiet(*_):
  pass


def test_one_step_per_dispatch_reproduces_the_training_loop_bit_for_bit(smoke_config, smoke_run):
  """The smoke run (40 steps through train_and_evaluate) and the same config here end on the same bits."""
  result = time_to_accuracy.time_to_accuracy(smoke_config, eval_every=20, log=_quiet)
  assert result["params_sha256"] == metric_logging.read_metrics(str(smoke_run))[-1]["params_sha256"]
  assert [r["step"] for r in result["history"]] == [20, 40]
  assert all(r["test_count"] == 10000 for r in result["history"])
  assert 0 < result["history"][0]["train_s"] < result["history"][1]["train_s"] == result["train_s"]


def test_reached_reports_the_first_evaluation_at_or_above_each_target():
  history = [{"step": 10, "epoch": 0.5, "train_s": 1.0, "test_accuracy": 0.985},
             {"step": 20, "epoch": 1.0, "train_s": 2.0, "test_accuracy": 0.992},
             {"step": 30, "epoch": 1.5, "train_s": 3.0, "test_accuracy": 0.989},
             {"step": 40, "epoch": 2.0, "train_s": 4.0, "test_accuracy": 0.991}]
  reached = time_to_accuracy.first_reached(history, (0.99, 0.995))
  assert reached == {"0.99": {"step": 20, "epoch": 1.0, "train_s": 2.0}, "0.995": None}


def test_npz_export_holds_tfds_splits_and_trains_the_same(smoke_config, smoke_run, tmp_path):
  path = str(tmp_path / "mnist.npz")
  time_to_accuracy.export_npz(smoke_config, path)
  with np.load(path) as arrays:
    assert arrays["train_images"].shape == (55000, 28, 28, 1) and arrays["train_images"].dtype == np.uint8
    assert arrays["test_images"].shape == (10000, 28, 28, 1)
    assert np.bincount(arrays["test_labels"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                           974, 1009]  # MNIST's published test counts
  from_npz = time_to_accuracy.time_to_accuracy(smoke_config, eval_every=40, data_npz=path, log=_quiet)
  assert from_npz["params_sha256"] == metric_logging.read_metrics(str(smoke_run))[-1]["params_sha256"]


def test_a_file_that_is_no_export_is_named(smoke_config, tmp_path):
  path = tmp_path / "broken.npz"
  path.write_bytes(b"not a zip file")
  with pytest.raises(input_pipeline.DatasetError, match="broken.npz: not an export"):
    time_to_accuracy.time_to_accuracy(smoke_config, data_npz=str(path), log=_quiet)


@pytest.mark.slow  # a whole extra run: kept out of the fast tier's budget
def test_the_configs_parallelism_is_used(synthetic_config):
  synthetic_config.parallelism = "pmap"
  result = time_to_accuracy.time_to_accuracy(synthetic_config, eval_every=4, log=_quiet)
  assert result["parallelism"] == "pmap" and result["steps_trained"] == 8
  assert [r["step"] for r in result["history"]] == [4, 8]
