"""How every program of the project defines its command-line flags.

Each program (`alexnet_jax.main`, `evaluate`, `predict`, `summary`, `experiments.*`) has a
`define_flags()` that its `if __name__ == "__main__":` block calls just before `app.run(main)`. Flags are
therefore defined only when a module runs as a program, so programs can import one another (a benchmark
imports the throughput experiment) without two definitions of `--config` colliding. The flags several
programs share are defined here once; `quiet_libraries` keeps the libraries' INFO lines off a program's
terminal.
"""

from __future__ import annotations

import logging as pylogging
import os

from absl import flags, logging
from ml_collections import config_flags

from alexnet_jax.inference import trained_run
from alexnet_jax.training import checkpointing


def define_config(default: str | None = "configs/default.py", lock: bool = False) -> None:
  """`--config FILE` (configs/*.py) with `--config.FIELD=VALUE` overrides; required if no default."""
  config_flags.DEFINE_config_file("config", default, "A config file (configs/*.py); override any field "
                                  "with --config.FIELD=VALUE.", lock_config=lock)
  if default is None:
    flags.mark_flags_as_required(["config"])


def define_trained_run(multiple: bool = False) -> None:
  """`--workdir` (required; repeatable with `multiple`), `--checkpoint` and `--weights`: which trained
  run(s), which of their checkpoints, and which weights (the raw ones or their moving average)."""
  if multiple:
    flags.DEFINE_multi_string("workdir", None, "A training run's workdir; several: their ensemble.")
  else:
    flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_string("checkpoint", "best", f"{' | '.join(checkpointing.CHECKPOINT_CHOICES)} or a saved "
                      "step number.")
  flags.DEFINE_enum("weights", "auto", list(trained_run.WEIGHTS_CHOICES), "auto: the run's model (the "
                    "moving average of its weights if it kept one); raw; ema.")
  flags.mark_flags_as_required(["workdir"])


_OWN_CODE = (f"{os.sep}alexnet_jax{os.sep}", f"{os.sep}experiments{os.sep}")


class _LibraryInfoFilter(pylogging.Filter):
  """Drops INFO and DEBUG records of other packages (Orbax's handler registries and per-save lines, JAX's
  backend probe, TFDS's builder lines); the project's own lines, and every warning and error, pass."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or any(part in record.pathname for part in _OWN_CODE)


def quiet_libraries() -> None:
  """A program's terminal shows its own lines, and the libraries' warnings and errors; `--verbosity=1`
  (or any --verbosity given) shows the libraries' INFO lines too."""
  if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
    return
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())
