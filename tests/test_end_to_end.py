"""Trains on the real MNIST files through the real TFDS builder and checks the accuracy over all
10,000 test images (the run itself is conftest's `trained_run`, shared with the prediction tests)."""

from alexnet_jax.training import metric_logging


def test_a_few_hundred_steps_on_real_mnist_reach_97_percent(trained_run):
  workdir, final = trained_run
  assert final["test_count"] == 10000
  assert final["test_accuracy"] >= 0.97, final
  records = metric_logging.read_metrics(str(workdir))
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert losses[-1] < losses[0]
