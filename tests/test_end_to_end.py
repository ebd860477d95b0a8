"""Trains on the real MNIST files through the real TFDS builder and checks the accuracy over all
10,000 test images."""

from alexnet_jax import metric_logging, train
from configs import default


def test_a_few_hundred_steps_on_real_mnist_reach_97_percent(mnist_data_dir, tmp_path):
  config = default.get_config()
  config.data.data_dir = mnist_data_dir
  # The default recipe on a narrower network and a shorter budget, so that CI affords it.
  config.model.width_multiplier = 0.5
  config.model.dense_width = 512
  config.batch_size = 64
  config.num_train_steps = 300
  config.eval_every_steps = 300
  config.checkpoint_every_steps = 300
  config.log_every_steps = 50
  final = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert final["test_count"] == 10000
  assert final["test_accuracy"] >= 0.97, final
  records = metric_logging.read_metrics(str(tmp_path / "run"))
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert losses[-1] < losses[0]
