"""The training engine: dispatch scheduling, and advancing a state exactly as the loop does."""

import jax
import numpy as np
import pytest

from alexnet_jax.training import engine, fingerprint


def test_dispatch_length_ends_at_every_boundary_the_loop_acts_on():
  assert engine.dispatch_length(0, 100, 8, 50, (6, 20)) == 6  # the log interval comes first
  assert engine.dispatch_length(16, 100, 8, 50, (20,)) == 4  # an evaluation at 20
  assert engine.dispatch_length(96, 100, 8, 50, ()) == 4  # the end of training
  assert engine.dispatch_length(0, 100, 80, 50, ()) == 50  # at most an epoch
  assert engine.dispatch_length(40, 100, 8, 50, (20,)) == 8


def test_rng_streams_are_distinct_and_seeded():
  def data(keys):
    return [np.asarray(jax.random.key_data(k)) for k in keys]

  keys = data(engine.rng_streams(0))
  assert all(np.array_equal(x, y) for x, y in zip(keys, data(engine.rng_streams(0)), strict=True))
  assert len({x.tobytes() for x in keys}) == 3
  assert not np.array_equal(data(engine.rng_streams(1))[1], keys[1])


def test_step_counts_follow_the_split_and_the_budget(synthetic_config):
  synthetic_config.num_train_steps = -1
  synthetic_config.num_epochs = 1.5
  assert engine.step_counts(synthetic_config) == (55000 // 32, round(1.5 * (55000 // 32)))
  assert engine.step_counts(synthetic_config, num_shards=2) == (27500 // 16, round(1.5 * (27500 // 16)))


def test_advancing_in_one_call_reaches_the_loops_parameters(synthetic_config, synthetic_run):
  """The loop stops at every log and evaluation boundary; the engine advanced over the same steps in one
  call gives the same bits."""
  _, final = synthetic_run
  run = engine.Engine(synthetic_config)
  run.load_data()
  state, metrics = run.advance(run.place(run.initial_state()), 0, run.total_steps)
  assert len(metrics) == run.total_steps  # one dispatch per step
  assert fingerprint.params_sha256(run.logical(state).params) == final["params_sha256"]


@pytest.mark.slow  # compiles a lax.scan program (slow on CPU)
def test_several_steps_per_dispatch_cover_the_same_steps(synthetic_config):
  synthetic_config.steps_per_dispatch = 4
  run = engine.Engine(synthetic_config)
  run.load_data()
  state = run.place(run.initial_state())
  assert run.compile(state, [(0, 8)]) > 0
  assert sorted(run._compiled_multi_step) == [4]  # one program for both dispatches
  state, metrics = run.advance(state, 0, 8)
  assert [len(m["loss"]) for m in metrics] == [4, 4]
  assert int(run.logical(state).step) == 8
