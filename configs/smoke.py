"""A run of well under a minute: a narrow AlexNet, a few steps. For tests and first contact."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.width_multiplier = 0.25
  config.model.dense_width = 128
  config.batch_size = 32
  config.eval_batch_size = 500
  config.num_train_steps = 40
  config.eval_every_steps = 20
  config.checkpoint_every_steps = 20
  config.log_every_steps = 10
  config.learning_rate = 1e-3
  config.schedule = "constant"
  # The plain state: 40 steps are too few for a moving average to mean anything (tests of the average
  # set ema_decay themselves).
  config.ema_decay = 0.0
  return config
