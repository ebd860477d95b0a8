"""optax optimizers and learning-rate schedules, chosen by config."""

from __future__ import annotations

from typing import Any

import jax
import optax

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "warmup_cosine", "step", "onecycle")


def create_schedule(config: Any, total_steps: int) -> optax.Schedule:
  """The learning rate per step; `config.learning_rate` is the peak."""
  peak = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(peak)
  if config.schedule == "warmup_cosine":
    warmup = min(config.warmup_steps, total_steps - 1)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps)
  if config.schedule == "step":
    # The paper divided the rate by 10 when validation error plateaued; a fixed interval stands in.
    return optax.exponential_decay(peak, config.step_decay_every_steps, config.step_decay_factor,
                                   staircase=True)
  if config.schedule == "onecycle":
    return optax.cosine_onecycle_schedule(total_steps, peak, config.onecycle_pct_start)
  raise ValueError(f"unknown schedule {config.schedule!r}")


def _decay_mask(params: Any) -> Any:
  """Weight decay on kernels only: biases and batch-norm scales/offsets are left alone."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def create_optimizer(config: Any, total_steps: int) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay (the paper's recipe) or AdamW, with optional clipping."""
  schedule = create_schedule(config, total_steps)
  if config.optimizer == "sgd":
    optimizer = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=_decay_mask),
        optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
  elif config.optimizer == "adamw":
    optimizer = optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask)
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}")
  if config.grad_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
  return optimizer
