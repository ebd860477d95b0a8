"""Trains and evaluates on N simulated CPU devices with far more programs dispatched than XLA's CPU
client holds in flight (32 per device): 200 dispatches of two steps each in one `Engine.advance`, then
an evaluation of 50 batches.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.dispatch_worker

Prints `trained 400 steps, evaluated 2000 examples` and exits 0 when every program ran. Without
parallel.DispatchWindow XLA aborts the process instead ("Termination timeout for `all reduce ...`", a
minute into the training): 3 runs of 3 with 4 simulated devices on a 2-core AMD EPYC; at 200 steps, 3 of
5. Two steps per
dispatch because then no batch gather runs between the steps (one step per dispatch gathers its batch
in a separate program, which on the CPU backend waits for the previous step and so holds the loop back
by itself). Synthetic digits: what is tested is how programs are dispatched, not what they learn.
"""

from __future__ import annotations

import jax
import numpy as np

from alexnet_jax.data import input_pipeline
from alexnet_jax.training import engine
from configs import smoke
from tests.conftest import synthetic_digits

STEPS = 400
EVAL_EXAMPLES, EVAL_BATCH_SIZE = 2000, 40


def main() -> None:
  config = smoke.get_config()
  config.num_train_steps = STEPS
  config.steps_per_dispatch = 2  # jit only (config_checks), the default parallelism
  config.eval_batch_size = EVAL_BATCH_SIZE
  run = engine.Engine(config)
  train_digits, eval_digits = synthetic_digits(4096, seed=0), synthetic_digits(EVAL_EXAMPLES, seed=1)
  run.use_training_data([input_pipeline.make_split(train_digits["image"], train_digits["label"],
                                                   sharding=run.data_sharding)])
  state = run.place(run.initial_state())
  run.compile(state, [(0, STEPS)])  # ahead of time, as experiments/time_to_accuracy.py does
  state, metrics = run.advance(state, 0, STEPS)  # one call, as between two logs
  losses = np.concatenate(jax.device_get([m["loss"] for m in metrics]))
  split = input_pipeline.make_split(eval_digits["image"], eval_digits["label"], EVAL_BATCH_SIZE,
                                    run.data_sharding)
  result = run.evaluate(state, split)
  if losses.shape != (STEPS,) or not np.all(np.isfinite(losses)) or result["count"] != EVAL_EXAMPLES:
    raise SystemExit(f"unexpected results: losses {losses}, evaluation {result}")
  print(f"trained {losses.size} steps, evaluated {result['count']} examples", flush=True)


if __name__ == "__main__":
  main()
