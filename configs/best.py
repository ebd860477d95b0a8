"""The longest measured recipe: the full-width network (configs/full_width.py) trained 16 epochs instead of
10.

It exists to answer whether more epochs of the recipe buy accuracy. On the seeds measured they did not: past
10 epochs validation accuracy stops rising (docs/recipe.md#configsbestpy). Training takes 1.6 times
full_width's steps. The runs, their machine and timings: docs/results/recipe.md#configsbestpy.
"""

import ml_collections

from configs import full_width


def get_config() -> ml_collections.ConfigDict:
  config = full_width.get_config()
  config.num_epochs = 16.0
  return config
