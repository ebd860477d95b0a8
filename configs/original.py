"""The 2012 paper's network and recipe (SGD, plain momentum 0.9, weight decay 5e-4, LRN) on 227x227 MNIST.

Meant for a GPU or TPU: about 140x the compute of the `mnist` variant per image.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.variant = "original"
  config.model.normalization = "lrn"
  config.optimizer = "sgd"
  # The paper's update is classical momentum 0.9 (its section 5), not the default config's Nesterov.
  config.nesterov = False
  config.learning_rate = 0.01
  config.schedule = "step"
  config.step_decay_every_steps = 2000
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 10
  config.weight_decay = 5e-4
  config.label_smoothing = 0.0
  config.ema_decay = 0.0  # the paper's model is its raw weights (the default keeps an average since)
  return config
