"""Schedules and optimizers chosen by config."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax.training import optimizers
from configs import default


def _config(**overrides):
  config = default.get_config()
  config.update(overrides)
  return config


def test_onecycle_peaks_at_its_fraction_and_ends_near_zero():
  schedule = optimizers.create_schedule(_config(schedule="onecycle", learning_rate=0.1,
                                                onecycle_pct_start=0.25), 1000)
  rates = np.array([schedule(s) for s in range(1000)])
  assert abs(int(rates.argmax()) - 250) <= 1
  assert rates.max() == pytest.approx(0.1, rel=1e-4)
  assert rates[-1] < 1e-3 and rates[0] < 0.01


def test_warmup_cosine_and_step_decay():
  warm = optimizers.create_schedule(_config(schedule="warmup_cosine", learning_rate=0.1,
                                            warmup_steps=100), 1000)
  assert float(warm(0)) == 0.0 and float(warm(100)) == pytest.approx(0.1)
  assert float(warm(1000)) == pytest.approx(0.0, abs=1e-6)
  step = optimizers.create_schedule(_config(schedule="step", learning_rate=0.1,
                                            step_decay_every_steps=300, step_decay_factor=0.1), 1000)
  assert [float(step(s)) for s in (0, 299, 300, 600)] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_weight_decay_touches_kernels_not_biases():
  params = {"conv1": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  zero_grads = {"conv1": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}}
  for name in ("sgd", "adamw"):
    tx = optimizers.create_optimizer(_config(optimizer=name, schedule="constant", learning_rate=0.1,
                                             weight_decay=0.5), 10)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert bool(jnp.all(new["conv1"]["kernel"] < 1.0)), name
    assert bool(jnp.all(new["conv1"]["bias"] == 1.0)), name


def test_gradient_clipping():
  tx = optimizers.create_optimizer(_config(optimizer="sgd", schedule="constant", learning_rate=1.0,
                                           momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0), 10)
  params = {"w": {"kernel": jnp.zeros((4,))}}
  updates, _ = tx.update({"w": {"kernel": jnp.full((4,), 10.0)}}, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)
