"""The evaluation report of a tiny run: files, counts, and the accuracy training logged."""

import json

import pytest

from alexnet_jax import checkpointing, evaluate, metric_logging, train, trained_run


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
  assert metrics["temperature"] == pytest.approx(logged["temperature"], rel=1e-12)
  assert metrics["expected_calibration_error_uncalibrated"] == pytest.approx(logged["test_ece"], abs=1e-9)
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


@pytest.mark.slow  # a whole extra run
def test_best_of_a_run_without_validation_is_a_clear_error(synthetic_config, tmp_path):
  synthetic_config.data.validation_size = 0
  synthetic_config.num_train_steps = synthetic_config.eval_every_steps = 2
  train.train_and_evaluate(synthetic_config, str(tmp_path))
  with pytest.raises(checkpointing.CheckpointError, match="validation accuracy to rank by"):
    trained_run.load(str(tmp_path), "best")
  run = trained_run.load(str(tmp_path), "latest")
  assert run.step == 2 and set(run.variables) == {"params", "batch_stats"}


@pytest.mark.slow
def test_hard_cases_and_robustness_of_a_trained_run(trained_run):
  """Every curve starts at the plain test accuracy exactly (strength 0 leaves the same 10,000 images);
  strong blur lowers it; the confused pairs get their gallery."""
  workdir, _ = trained_run
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
