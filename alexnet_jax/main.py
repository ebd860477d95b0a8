"""Command line: `python -m alexnet_jax.main --config configs/default.py --workdir runs/x [--config.F=V]`.

Running the same command on the same workdir resumes from its latest checkpoint.
"""

import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import checkpointing, config_checks, input_pipeline, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard logs.")
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _LibraryChatterFilter(pylogging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the console; its warnings and errors still show."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_LibraryChatterFilter())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_checks.ConfigError, input_pipeline.DatasetError, checkpointing.CheckpointError,
          train.NonFiniteLossError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except train.Preempted as e:
    logging.warning("%s", e)
    sys.exit(train.PREEMPTED_EXIT_CODE)
  return 0


if __name__ == "__main__":
  app.run(main)
