"""Command line: `python -m alexnet_jax.main --config configs/default.py --workdir runs/x [--config.F=V]`.

Two stages: training (training/loop.py), then calibration of the finished run's probabilities
(inference/calibrate.py). Running the same command on the same workdir resumes from its latest checkpoint;
on a finished run it only completes what is missing. Past one machine, add
`--distributed` (JAX detects TPU pods, SLURM and other clusters by itself) or give the coordinator
explicitly: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on each process.
"""

import sys

import jax
from absl import app, flags, logging

from alexnet_jax import cli
from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import calibrate
from alexnet_jax.training import checkpointing, loop, metric_logging, run_config

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
  cli.define_config(default=None, lock=True)
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize(): auto-detected on TPU pods, SLURM, ...")
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (implies --distributed).")
  flags.DEFINE_integer("num_processes", None, "How many processes in all (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
  flags.DEFINE_bool("start_over", False, "When every checkpoint of the workdir is damaged, train again from "
                    "step 0 (without it the run stops and says so).")
  flags.mark_flags_as_required(["workdir"])


def _initialize_distributed() -> None:
  """JAX's own distributed runtime; nothing else launches or connects the processes."""
  if not (FLAGS.distributed or FLAGS.coordinator_address):
    return
  # CPU processes exchange gradients through gloo; accelerators keep their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info("process %d of %d, %d local devices of %d", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_libraries()
  _initialize_distributed()
  try:
    final_record = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, start_over=FLAGS.start_over)
    if "val_accuracy" in final_record:  # every process, as Orbax restores together; the first one writes
      calibrate.calibrate_run(FLAGS.workdir, store=jax.process_index() == 0)
  except (run_config.ConfigError, input_pipeline.DatasetError, checkpointing.CheckpointError,
          metric_logging.MetricsError, loop.NonFiniteLossError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except loop.Preempted as e:
    logging.warning("%s", e)
    sys.exit(loop.PREEMPTED_EXIT_CODE)
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
