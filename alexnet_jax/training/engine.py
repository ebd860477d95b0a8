"""The training engine: a run set up from its config, and its state advanced exactly as the loop does.

`Engine(config)` builds what a run needs before its first step: the device mesh and data-parallel
strategy, how the data is cut across processes, the model, optimizer and learning-rate schedule, the
random streams and the compiled step functions. `engine.advance(state, step, n)` then trains `n` steps
from `step`: one dispatch per step, or `config.steps_per_dispatch` steps per `lax.scan` call.

`loop.train_and_evaluate` (the loop's policy: when to log, evaluate, save and stop) and the experiments
(time to accuracy, throughput, benchmark) all drive this one engine, so they follow one trajectory: with
the same config and seed they reach the same parameters bit for bit.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
from absl import logging

from alexnet_jax.data import input_pipeline
from alexnet_jax.model import alexnet
from alexnet_jax.training import optimizers, parallel, run_config, steps


class RngStreams(NamedTuple):
  """Every random draw of a run comes from one of these keys, all folded from `config.seed`."""

  init: jax.Array  # parameter initialisation
  train: jax.Array  # step s: augmentation and dropout from fold_in(train, s)
  data: jax.Array  # epoch e's example order from fold_in(data, e)


def rng_streams(seed: int) -> RngStreams:
  root = jax.random.key(seed)
  return RngStreams(*(jax.random.fold_in(root, i) for i in range(3)))


def step_counts(config: ml_collections.ConfigDict, num_shards: int = 1) -> tuple[int, int]:
  """(steps per epoch, total training steps) of a run whose training split is cut into `num_shards`."""
  # tfds.even_splits gives the remainder to the first shards: the last shard is the smallest.
  smallest_shard = (input_pipeline.MNIST_TRAIN_SIZE - config.data.validation_size) // num_shards
  steps_per_epoch = smallest_shard // (config.batch_size // num_shards)
  total_steps = (config.num_train_steps if config.num_train_steps != -1
                 else round(config.num_epochs * steps_per_epoch))
  return steps_per_epoch, total_steps


def dispatch_length(step: int, total_steps: int, steps_per_dispatch: int, steps_per_epoch: int,
                    boundaries: tuple[int, ...]) -> int:
  """Steps in the next dispatch from `step`: at most steps_per_dispatch and an epoch, and ending at the
  next multiple of each of `boundaries` (log, eval, checkpoint intervals) so that none is skipped."""
  length = min(steps_per_dispatch, total_steps - step, steps_per_epoch)
  for every in boundaries:
    length = min(length, every - step % every)
  return length


class Engine:
  """One run's setup and its step-by-step mechanics; the caller decides what happens between steps."""

  def __init__(self, config: ml_collections.ConfigDict):
    run_config.validate_config(config, num_devices=jax.device_count(),
                                  num_processes=jax.process_count())
    if config.steps_per_dispatch > 1 and jax.default_backend() == "cpu":
      logging.warning("steps_per_dispatch=%d on a CPU: XLA's CPU backend runs a step inside a loop "
                      "(lax.scan) many times slower than alone; 1 is faster there",
                      config.steps_per_dispatch)
    self.config = config
    self.mesh = parallel.create_mesh()
    self.strategy = parallel.create_strategy(config.parallelism, self.mesh)
    self.layout = input_pipeline.DataLayout(num_shards=config.data.num_shards or jax.process_count(),
                                            process_index=jax.process_index(),
                                            process_count=jax.process_count())
    # Each process keeps its own share of the data, whole, on its own devices.
    self.data_sharding = parallel.replicated(parallel.create_mesh(jax.local_devices()))
    self.steps_per_epoch, self.total_steps = step_counts(config, self.layout.num_shards)
    self.rngs = rng_streams(config.seed)
    self.model = alexnet.create_model(config.model, batch_norm_axis_name=self.strategy.batch_norm_axis_name,
                                     data_mesh=self.strategy.data_mesh)
    self.optimizer = optimizers.create_optimizer(config, self.total_steps)
    self.schedule = optimizers.create_schedule(config, self.total_steps)
    # The steps read their settings from the config itself, frozen: nothing can change it under them.
    frozen = ml_collections.FrozenConfigDict(config)
    self.train_fn = self.strategy.compile_train(functools.partial(steps.train_step, config=frozen))
    self.eval_fn = self.strategy.compile_eval(steps.eval_step)
    # With config.ema_decay > 0 the run's model is the moving average of its weights (see TrainState).
    self.uses_ema = bool(config.ema_decay)
    self.ema_eval_fn = self.strategy.compile_eval(functools.partial(steps.eval_step, use_ema=True))
    self._take_fn = jax.jit(input_pipeline.take_local_batch, static_argnames="batch_size")
    self._permutation_fn = jax.jit(input_pipeline.epoch_permutation, static_argnums=2,
                                   out_shardings=self.data_sharding)
    if config.steps_per_dispatch > 1:  # jit only (config_checks): batches gathered inside the program
      self._multi_step_fn = jax.jit(
          functools.partial(steps.train_steps, steps_per_epoch=self.steps_per_epoch,
                            batch_size=config.batch_size, config=frozen,
                            batch_sharding=self.strategy.batch_sharding),
          static_argnames="num_steps", donate_argnums=0)
    self._compiled_multi_step: dict[int, Any] = {}
    self._train_shards: tuple[tuple[jax.Array, jax.Array], ...] = ()
    self._permutations: tuple[jax.Array, ...] = ()
    self._permutation_epoch: int | None = None

  # --- Data and state ------------------------------------------------------------------------------

  def load_data(self) -> dict[str, Any]:
    """This process's splits of TFDS `mnist` (see input_pipeline.load_mnist); trains on its shards."""
    splits = input_pipeline.load_mnist(self.config.data, self.config.eval_batch_size, self.data_sharding,
                                       self.layout)
    self.use_training_data(splits["train"])
    return splits

  def use_training_data(self, shards: list[input_pipeline.Split]) -> None:
    """Trains on these shards (this process's, in `layout.local_shards` order)."""
    if len(shards) != len(self.layout.local_shards):
      raise ValueError(f"{len(shards)} training shards given, this process holds "
                       f"{len(self.layout.local_shards)}")
    self._train_shards = tuple((shard.images, shard.labels) for shard in shards)
    self._permutation_epoch = None

  def initial_state(self) -> steps.TrainState:
    """The freshly initialised state, replicated over the mesh (the form checkpoints hold)."""
    create = functools.partial(steps.create_train_state, self.model, self.optimizer, ema=self.uses_ema)
    return jax.jit(create, out_shardings=parallel.replicated(self.mesh))(self.rngs.init)

  def place(self, state: steps.TrainState) -> steps.TrainState:
    """A replicated state -> the strategy's layout (a leading device axis under pmap)."""
    return self.strategy.place_state(state)

  def logical(self, state: steps.TrainState) -> steps.TrainState:
    """The strategy's layout -> one logical copy (what checkpoints and fingerprints see)."""
    return self.strategy.logical_state(state)

  # --- Training ------------------------------------------------------------------------------------

  def dispatch_length(self, step: int, boundaries: tuple[int, ...] = ()) -> int:
    """Steps the next dispatch from `step` runs (1 unless config.steps_per_dispatch > 1)."""
    return dispatch_length(step, self.total_steps, self.config.steps_per_dispatch,
                           self.steps_per_epoch, boundaries)

  def _dispatches(self, step: int, end: int) -> Iterator[tuple[int, int]]:
    while step < end:
      length = dispatch_length(step, end, self.config.steps_per_dispatch, self.steps_per_epoch, ())
      yield step, length
      step += length

  def advance(self, state: steps.TrainState, step: int, num_steps: int
              ) -> tuple[steps.TrainState, list[dict[str, jax.Array]]]:
    """Trains `num_steps` steps from `step`; returns the state and each dispatch's metrics, without
    waiting for the last dispatches (parallel.DispatchWindow says why it waits for earlier ones)."""
    if not self._train_shards:
      raise RuntimeError("no training data: call load_data() or use_training_data() first")
    all_metrics, window = [], parallel.DispatchWindow()
    for first, length in self._dispatches(step, step + num_steps):
      if self.config.steps_per_dispatch > 1:
        state, metrics = self._multi_step(length)(state, self._train_shards[0], first,
                                                  train_rng=self.rngs.train, data_rng=self.rngs.data)
      else:
        state, metrics = self.train_fn(state, self.strategy.shard_batch(self._batch(first)),
                                       self.rngs.train)
      all_metrics.append(window(metrics))
    return state, all_metrics

  def _batch(self, step: int) -> dict[str, jax.Array]:
    """This process's part of step `step`'s global batch, in the epoch's order."""
    epoch, index = divmod(step, self.steps_per_epoch)
    if self._permutation_epoch != epoch:  # One permutation per shard and epoch, drawn once.
      self._permutations = tuple(
          self._permutation_fn(input_pipeline.shard_rng(self.rngs.data, shard_id, self.layout.num_shards),
                               epoch, images.shape[0])
          for shard_id, (images, _) in zip(self.layout.local_shards, self._train_shards, strict=True))
      self._permutation_epoch = epoch
    return self._take_fn(self._train_shards, self._permutations, index,
                         batch_size=self.config.batch_size // self.layout.num_shards)

  def _multi_step(self, length: int):
    return self._compiled_multi_step.get(length) or functools.partial(self._multi_step_fn,
                                                                      num_steps=length)

  def compile(self, state: steps.TrainState, intervals: Iterable[tuple[int, int]]) -> float:
    """Compiles ahead of time every training program that `advance(state, step, n)` runs for each
    (step, n) of `intervals`, so that no call of theirs compiles; returns the seconds it took."""
    start = time.perf_counter()
    intervals = list(intervals)
    if self.config.steps_per_dispatch > 1:
      lengths = {length for step, n in intervals for _, length in self._dispatches(step, step + n)}
      for length in sorted(lengths - self._compiled_multi_step.keys()):
        self._compiled_multi_step[length] = self._multi_step_fn.lower(
            state, self._train_shards[0], intervals[0][0], train_rng=self.rngs.train,
            data_rng=self.rngs.data, num_steps=length).compile()
    elif hasattr(self.train_fn, "lower"):  # Not compiled yet.
      batch = self.strategy.shard_batch(self._batch(intervals[0][0]))
      self.train_fn = self.train_fn.lower(state, batch, self.rngs.train).compile()
    return time.perf_counter() - start

  # --- Evaluation ----------------------------------------------------------------------------------

  def evaluate(self, state: steps.TrainState, split: input_pipeline.Split, use_ema: bool = False
               ) -> dict[str, float]:
    """Loss, accuracy and the exact number of examples over a whole split, of the weights or (use_ema)
    of their moving average."""
    return steps.evaluate_split(self.ema_eval_fn if use_ema else self.eval_fn, state, split,
                                self.config.eval_batch_size)
