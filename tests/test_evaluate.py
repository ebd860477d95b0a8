"""The evaluation report of a tiny run: files, counts, and the accuracy training logged."""

import json
import shutil

import numpy as np
import pytest

from alexnet_jax.analysis import classification_metrics, evaluate
from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import calibration, trained_run
from alexnet_jax.training import checkpointing, loop, metric_logging
from tests.conftest import final_calibration


@pytest.fixture
def finished_run(smoke_run):
  return smoke_run


def test_report_files_and_accuracy_equal_to_training(finished_run):
  metrics = evaluate.evaluate_run(str(finished_run), "latest", "test", with_robustness=False)
  logged = metric_logging.read_metrics(str(finished_run))[-1]
  assert metrics["count"] == 10000 == logged["test_count"]
  assert metrics["accuracy"] == pytest.approx(logged["test_accuracy"], abs=1e-9)
  assert metrics["loss_uncalibrated"] == pytest.approx(logged["test_loss"], rel=1e-4)
  # Calibration changes no prediction; it lowers the loss (T was fitted on validation, not on test).
  stored = final_calibration(finished_run)  # what the calibration stage stored after training
  assert metrics["temperature"] == pytest.approx(stored["temperature"], rel=1e-12)
  assert metrics["expected_calibration_error_uncalibrated"] == pytest.approx(stored["test_ece_before"],
                                                                             abs=1e-9)
  report = finished_run / "report"
  for name in ("metrics.json", "confusion_matrix.png", "per_class.png", "learning_curves.png",
               "misclassified.png", "reliability.png", "report.md"):
    assert (report / name).stat().st_size > 0, name
  saved = json.loads((report / "metrics.json").read_text())
  assert sum(map(sum, saved["confusion_matrix"])) == 10000
  assert "confusion_matrix.png" in (report / "report.md").read_text()


def test_best_checkpoint_on_validation(finished_run):
  metrics = evaluate.evaluate_run(str(finished_run), "best", "validation", with_robustness=False)
  assert metrics["count"] == 5000 and metrics["split"] == "validation"


def test_missing_checkpoint_is_named(finished_run):
  with pytest.raises(checkpointing.CheckpointError, match="checkpoint '7' not found"):
    evaluate.evaluate_run(str(finished_run), "7", "test", with_robustness=False)


def test_a_negative_tta_radius_is_named(synthetic_run):
  with pytest.raises(checkpointing.CheckpointError, match="--tta_radius=-1"):
    trained_run.load(str(synthetic_run[0]), "latest", tta_radius=-1)


@pytest.mark.slow  # a whole extra run
def test_best_of_a_run_without_validation_is_a_clear_error(synthetic_config, tmp_path):
  synthetic_config.data.validation_size = 0
  synthetic_config.num_train_steps = synthetic_config.eval_every_steps = 2
  loop.train_and_evaluate(synthetic_config, str(tmp_path))
  with pytest.raises(checkpointing.CheckpointError, match="validation accuracy to rank by"):
    trained_run.load(str(tmp_path), "best")
  run = trained_run.load(str(tmp_path), "latest")
  assert run.step == 2 and set(run.variables) == {"params", "batch_stats"}


@pytest.mark.slow
def test_hard_cases_and_robustness_of_a_trained_run(finished_run):
  """Every curve starts at the plain test accuracy exactly (strength 0 leaves the same 10,000 images);
  strong blur lowers it; the confused pairs get their gallery. On the smoke run: the curves are 28 passes
  over the test split, and through its narrower network this test took 42 s against 97 s on `trained_run`
  (2-core CPU)."""
  workdir = finished_run
  metrics = evaluate.evaluate_run(str(workdir), "latest", "test")
  for name, points in metrics["robustness"].items():
    at_zero = [p for p in points if p["strength"] == 0]
    assert at_zero and at_zero[0]["accuracy"] == metrics["accuracy"], name
    assert all(p["count"] == 10000 for p in points)
  blur = metrics["robustness"]["blur"]
  assert blur[-1]["strength"] == 2.5 and blur[-1]["accuracy"] < metrics["accuracy"] - 0.01
  report = workdir / "report"
  for name in ("robustness.png", "confused_pairs.png", "learning_curves.png"):
    assert (report / name).stat().st_size > 0
  assert "## Robustness" in (report / "report.md").read_text()


def test_a_run_without_a_stored_temperature_gets_one_fitted_on_validation(synthetic_run, synthetic_mnist,
                                                                          tmp_path):
  """The temperature evaluate fits is the one training stored (same logits, same fit), and is stored."""
  del synthetic_mnist
  source, _ = synthetic_run
  stored = final_calibration(source)
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  (tmp_path / calibration.CALIBRATION_FILE).unlink()
  assert trained_run.load(str(tmp_path), "latest").temperature is None
  metrics = evaluate.evaluate_run(str(tmp_path), "latest", "test", with_robustness=False)
  assert metrics["temperature"] == pytest.approx(stored["temperature"], rel=1e-9)
  assert trained_run.load(str(tmp_path), "latest").temperature == metrics["temperature"]
  assert metrics["expected_calibration_error"] == pytest.approx(stored["test_ece_after"], abs=1e-9)


@pytest.mark.slow  # a whole extra run
def test_ensemble_is_the_mean_of_calibrated_probabilities(synthetic_run, synthetic_config, tmp_path):
  first, _ = synthetic_run
  synthetic_config.seed = 1
  loop.train_and_evaluate(synthetic_config, str(tmp_path / "second"))
  workdirs = [str(first), str(tmp_path / "second")]
  metrics = evaluate.evaluate_runs(workdirs, "latest", "test", with_robustness=False,
                                   report_dir=str(tmp_path / "ensemble"))
  members = [trained_run.load(w, "latest") for w in workdirs]
  test = input_pipeline.load_mnist(members[0].config.data, members[0].config.eval_batch_size)["test"]
  outputs = [m.split_logits(test, m.config.eval_batch_size) for m in members]
  mean = np.mean([calibration.softmax(logits, m.temperature) for m, (logits, _) in
                  zip(members, outputs, strict=True)], axis=0)
  labels = outputs[0][1]
  assert metrics["count"] == 10000
  assert metrics["accuracy"] == np.mean(mean.argmax(1) == labels)
  assert [m["accuracy"] for m in metrics["ensemble"]] == [np.mean(o[0].argmax(1) == labels) for o in outputs]
  assert metrics["expected_calibration_error"] == pytest.approx(
      classification_metrics.expected_calibration_error(mean, labels), abs=1e-12)
  report = tmp_path / "ensemble"
  assert "ensemble of 2 runs" in (report / "report.md").read_text()
  assert (report / "reliability.png").stat().st_size > 0 and not (report / "learning_curves.png").exists()


@pytest.mark.slow  # 9 views of 25,000 images, and 9 more of 10,000 for the reference
def test_test_time_augmentation_reports_both_and_keeps_its_own_temperature(synthetic_run, synthetic_mnist,
                                                                          tmp_path):
  """The 9-view prediction is the mean of the probabilities of the shifted images (shifted here in NumPy),
  the one-view accuracy beside it is training's, and its temperature is stored beside the one-view one."""
  del synthetic_mnist
  source, final = synthetic_run
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  metrics = evaluate.evaluate_run(str(tmp_path), "latest", "test", with_robustness=False, tta_radius=1)
  assert metrics["tta_views"] == 9 and metrics["count"] == 10000
  assert metrics["accuracy_single_view"] == pytest.approx(final["test_accuracy"], abs=1e-9)

  one_view = trained_run.load(str(tmp_path), "latest")
  augmented = trained_run.load(str(tmp_path), "latest", tta_radius=1)
  assert augmented.temperature == metrics["temperature"] != one_view.temperature
  test = input_pipeline.load_mnist(one_view.config.data, one_view.config.eval_batch_size)["test"]
  keep = np.asarray(test.mask) > 0
  images, labels = np.asarray(test.images)[keep], np.asarray(test.labels)[keep]
  logits = one_view.logits_fn()
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  views = [np.asarray(logits(padded[:, 1 - dy:29 - dy, 1 - dx:29 - dx]))
           for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
  expected = np.mean([calibration.softmax(v) for v in views], axis=0)
  tta_logits, _ = augmented.split_logits(test, augmented.config.eval_batch_size)
  np.testing.assert_allclose(calibration.softmax(tta_logits), expected, atol=1e-5)
  assert metrics["accuracy"] == np.mean(tta_logits.argmax(1) == labels)
  # Where the reference's top two classes are clearly apart, both predict the same class.
  top2 = np.sort(expected, axis=1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 1e-4
  np.testing.assert_array_equal(tta_logits.argmax(1)[clear], expected.argmax(1)[clear])
