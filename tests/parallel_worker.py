"""Runs the same train steps and evaluation on 1 device, jit over N and pmap over N; writes an .npz.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.parallel_worker DATA_DIR OUT.npz \\
      [--normalizations none,batchnorm] [--steps 3] [--with_bugs]

The device count must be fixed before JAX starts, so tests/test_parallel.py runs this in a subprocess and
compares what it wrote. `--with_bugs` adds N-device strategies with a data-parallel defect injected, so
that the test can show it catches them. Keys: `{normalization}/{strategy}/loss/{step}`,
`.../state/{step}/{leaf path}` (step 0: the initial state), `.../eval/{split}/{sum}`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax.data import input_pipeline
from alexnet_jax.model import alexnet
from alexnet_jax.training import engine, optimizers, parallel, steps
from configs import smoke

# Injected defects, each in the N-device strategy whose name it carries, and the normalisation under
# which each is run (batch statistics exist only with batch norm).
BUGS = {"pmap_no_pmean": "none", "jit_same_shard": "none", "pmap_same_shard": "none",
        "pmap_local_batch_stats": "batchnorm"}


def agreement_config(normalization: str):
  """The smoke network with dropout off: Flax draws dropout masks per device under pmap by design, so
  with dropout the strategies would legitimately differ. SGD's update is linear in the gradient, so a
  rounding-level gradient difference stays at rounding level in the parameters (Adam's first update is
  about sign(gradient): it would turn a rounding difference of a near-zero gradient into a full step)."""
  config = smoke.get_config()
  config.model.normalization = normalization
  config.model.dropout_rate = 0.0
  # The tolerances are float32's: bfloat16 products (`auto` on a CPU with native bfloat16) would turn a
  # rounding-level difference of an activation into a whole bfloat16 step wherever it flips a rounding.
  config.model.dtype = "float32"
  config.optimizer = "sgd"
  config.learning_rate = 0.02
  return config


def _first_part_repeated(batch, n: int):
  """Injected bug: every device gets the first device's part of the batch."""
  return jax.tree.map(lambda x: jnp.tile(x[:x.shape[0] // n], (n,) + (1,) * (x.ndim - 1)), batch)


class _SameShardJit(parallel.JitDataParallel):
  def shard_batch(self, batch):
    return super().shard_batch(_first_part_repeated(batch, self.batch_sharding.mesh.size))


class _SameShardPmap(parallel.PmapDataParallel):
  def shard_batch(self, batch):
    return super().shard_batch(_first_part_repeated(batch, len(self.devices)))


class _LocalBatchStatsPmap(parallel.PmapDataParallel):
  """Injected bug: batch norm normalises by each device's own 1/N of the batch."""

  batch_norm_axis_name = None


def _no_pmean_step(state, batch, rng, config, axis_name=None):
  """Injected bug: each device applies its own gradient (the pmean over devices is skipped)."""
  del axis_name
  return steps.train_step(state, batch, rng, config)


def strategies(with_bugs: bool, normalization: str) -> dict[str, tuple[object, Callable]]:
  """name -> (strategy, train step function): the three real ones, and the bugged ones that apply."""
  devices = jax.devices()
  n = len(devices)
  named = {"one": (parallel.JitDataParallel(parallel.create_mesh(devices[:1])), steps.train_step),
           f"jit{n}": (parallel.JitDataParallel(parallel.create_mesh()), steps.train_step),
           f"pmap{n}": (parallel.PmapDataParallel(devices), steps.train_step)}
  bugged = {"pmap_no_pmean": (parallel.PmapDataParallel(devices), _no_pmean_step),
            "jit_same_shard": (_SameShardJit(parallel.create_mesh()), steps.train_step),
            "pmap_same_shard": (_SameShardPmap(devices), steps.train_step),
            "pmap_local_batch_stats": (_LocalBatchStatsPmap(devices), steps.train_step)}
  if with_bugs:
    named.update({name.replace("_", f"{n}_", 1): bugged[name] for name, applies in BUGS.items()
                  if applies == normalization})
  return named


def _record_state(results: dict[str, np.ndarray], prefix: str, state: steps.TrainState) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      {"params": state.params, "batch_stats": state.batch_stats})[0]:
    results[f"{prefix}/{jax.tree_util.keystr(path)}"] = np.asarray(jax.device_get(leaf))


def run_normalization(normalization: str, splits, num_steps: int, with_bugs: bool, results: dict) -> None:
  config = agreement_config(normalization)
  frozen = ml_collections.FrozenConfigDict(config)
  init_rng, train_rng, data_rng = engine.rng_streams(config.seed)
  train_split = splits["train"][0]
  permutation = input_pipeline.epoch_permutation(data_rng, 0, train_split.num_examples)
  batches = [input_pipeline.take_batch(train_split.images, train_split.labels, permutation, i,
                                       config.batch_size) for i in range(num_steps)]
  reference_state = None
  for name, (strategy, step_fn) in strategies(with_bugs, normalization).items():
    prefix = f"{normalization}/{name}"
    model = alexnet.create_model(config.model, batch_norm_axis_name=strategy.batch_norm_axis_name,
                                data_mesh=strategy.data_mesh)
    results[f"{prefix}/conv_impl"] = np.asarray(model.conv_impl)
    state = steps.create_train_state(model, optimizers.create_optimizer(config, 100), init_rng)
    _record_state(results, f"{prefix}/state/0", state)
    state = strategy.place_state(state)
    train_fn = strategy.compile_train(functools.partial(step_fn, config=frozen))
    for step, batch in enumerate(batches, start=1):
      state, metrics = train_fn(state, strategy.shard_batch(batch), train_rng)
      results[f"{prefix}/loss/{step}"] = np.ravel(jax.device_get(metrics["loss"]))
      _record_state(results, f"{prefix}/state/{step}", strategy.logical_state(state))
    if reference_state is None:
      reference_state = jax.device_get(strategy.logical_state(state))
    if "_" in name:
      continue  # Bugged strategies (named strategy_bug): only their training is checked.
    # Every strategy evaluates the same (the one-device run's) state: this isolates the evaluation.
    eval_fn = strategy.compile_eval(steps.eval_step)
    placed = strategy.place_state(reference_state.replace(apply_fn=model.apply))
    for split in ("validation", "test"):
      sums = jax.device_get(steps.evaluate_sums(eval_fn, placed, splits[split], config.eval_batch_size))
      for key, value in sums.items():
        results[f"{prefix}/eval/{split}/{key}"] = np.asarray(value)
  # The reference state's top-two logit margins: argmax may legitimately flip where they are within
  # rounding of each other, so the test allows that many differently counted examples and no more.
  variables = {"params": reference_state.params, "batch_stats": reference_state.batch_stats}
  apply = jax.jit(functools.partial(alexnet.create_model(config.model).apply, train=False))
  for split in ("validation", "test"):
    logits = np.asarray(apply(variables, input_pipeline.normalize(splits[split].images)))
    top2 = np.sort(logits, axis=-1)[:, -2:]
    real = np.asarray(splits[split].mask) > 0
    results[f"{normalization}/margins/{split}"] = (top2[:, 1] - top2[:, 0])[real]
    results[f"{normalization}/logit_scale/{split}"] = np.max(np.abs(logits[real]), axis=-1)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("data_dir")
  parser.add_argument("out")
  parser.add_argument("--normalizations", default="none,batchnorm")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--with_bugs", action="store_true")
  args = parser.parse_args()
  config = smoke.get_config()
  config.data.data_dir = args.data_dir
  splits = input_pipeline.load_mnist(config.data, config.eval_batch_size)
  results: dict[str, np.ndarray] = {}
  for normalization in args.normalizations.split(","):
    run_normalization(normalization, splits, args.steps, args.with_bugs, results)
  np.savez(args.out, **results)


if __name__ == "__main__":
  main()
