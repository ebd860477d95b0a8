"""The pure train and eval steps (training/steps.py): the loss falls, randomness is folded with the step,
the moving average of the weights, masked evaluation."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alexnet_jax.model import alexnet
from alexnet_jax.training import optimizers, steps
from configs import default, smoke


def _step_config(**fields) -> ml_collections.FrozenConfigDict:
  """The train step's settings: configs/default.py's with augmentation, label smoothing and the moving
  average off, then `fields` ({"data.max_rotate": 10.0, ...})."""
  config = default.get_config()
  config.data.augment, config.label_smoothing, config.ema_decay = False, 0.0, 0.0
  for field, value in fields.items():
    *sections, name = field.split(".")
    section = config
    for part in sections:
      section = section[part]
    section[name] = value
  return ml_collections.FrozenConfigDict(config)

def _tiny_state(normalization="none"):
  config = smoke.get_config()
  config.model.normalization = normalization
  config.model.dropout_rate = 0.0  # memorising a fixed batch is the point here
  config.learning_rate = 3e-3
  model = alexnet.create_model(config.model)
  tx = optimizers.create_optimizer(config, 100)
  return steps.create_train_state(model, tx, jax.random.key(0))


def _fixed_batch(n=32):
  """Noisy images whose class is where a bright bar lies: learnable in a few steps."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, (n,))
  images = rng.integers(0, 60, (n, 28, 28, 1))
  for i, label in enumerate(labels):
    images[i, 2 * label + 2:2 * label + 6, 4:24] = 255
  return {"image": jnp.asarray(images.astype(np.uint8)), "label": jnp.asarray(labels.astype(np.int32)),
          "mask": jnp.ones((n,))}


@pytest.mark.parametrize("normalization", ["none", "batchnorm"])
def test_train_steps_lower_the_loss_on_a_fixed_batch(normalization):
  state = _tiny_state(normalization)
  batch = _fixed_batch()
  step = jax.jit(lambda s, b, r: steps.train_step(s, b, r, _step_config()))
  before = float(steps.eval_step(state, batch)["loss_sum"])
  for _ in range(20):
    state, metrics = step(state, {"image": batch["image"], "label": batch["label"]}, jax.random.key(1))
  assert int(state.step) == 20
  assert float(steps.eval_step(state, batch)["loss_sum"]) < 0.5 * before
  if normalization == "batchnorm":
    assert not jnp.allclose(state.batch_stats["bn1"]["mean"], 0.0)


def _same(tree_a, tree_b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(jnp.array_equal, tree_a, tree_b)))


def test_step_rng_is_folded_with_the_step_number():
  state = _tiny_state()
  batch = {k: v for k, v in _fixed_batch().items() if k != "mask"}
  config = _step_config(**{"data.augment": True, "data.max_translate": 2.0, "data.max_rotate": 10.0,
                             "data.max_scale": 0.1})
  step = jax.jit(steps.train_step, static_argnames="config")
  a, _ = step(state, batch, jax.random.key(7), config=config)
  b, _ = step(state, batch, jax.random.key(7), config=config)
  assert _same(a.params, b.params)
  later = state.replace(step=state.step + 1)
  c, _ = step(later, batch, jax.random.key(7), config=config)
  assert not _same(a.params, c.params)


def test_ema_is_the_moving_average_of_the_weights_and_leaves_them_alone():
  """Each step: ema <- d * ema + (1 - d) * new weights, d = min(decay, (1 + s) / (10 + s)) at step s; the
  raw weights follow exactly the trajectory of a run without the average."""
  model = alexnet.create_model(smoke.get_config().model)
  tx = optimizers.create_optimizer(smoke.get_config(), 100)
  plain = steps.create_train_state(model, tx, jax.random.key(0))
  averaged = steps.create_train_state(model, tx, jax.random.key(0), ema=True)
  assert _same(averaged.ema["params"], plain.params)
  batch = {k: v for k, v in _fixed_batch().items() if k != "mask"}
  decay = 0.5
  step = jax.jit(steps.train_step, static_argnames="config")
  expected = jax.tree.map(lambda x: np.asarray(x, np.float64), plain.params)
  for s in range(3):
    plain, _ = step(plain, batch, jax.random.key(1), config=_step_config())
    averaged, _ = step(averaged, batch, jax.random.key(1), config=_step_config(ema_decay=decay))
    d = min(decay, (1 + s) / (10 + s))
    expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * np.asarray(p, np.float64), expected,
                            plain.params)
  assert _same(averaged.params, plain.params)
  # float32 arithmetic, 3 updates of 2 products and a sum: a few units in the last place of the weights.
  for got, want in zip(jax.tree.leaves(averaged.ema["params"]), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6,
                               atol=1e-6 * np.abs(want).max())
  assert not _same(averaged.ema["params"], averaged.params)


def test_ema_decay_ramps_up_to_its_setting():
  at = jnp.array([0, 10, 10000, 100000])
  np.testing.assert_allclose(steps.ema_decay_at(at, 0.999),
                             [0.1, 11 / 20, 0.999, 0.999], rtol=1e-6)


def test_eval_step_ignores_masked_examples():
  state = _tiny_state()
  batch = _fixed_batch(8)
  full = steps.eval_step(state, batch)
  half_mask = batch["mask"].at[4:].set(0.0)
  garbage = batch["image"].at[4:].set(255)
  half = steps.eval_step(state, {**batch, "mask": half_mask, "image": garbage})
  first_four = steps.eval_step(state, {k: v[:4] for k, v in batch.items()})
  assert float(half["count"]) == 4 and float(full["count"]) == 8
  np.testing.assert_allclose(float(half["loss_sum"]), float(first_four["loss_sum"]), rtol=1e-5)
  assert float(half["correct"]) == float(first_four["correct"])
