"""How every program of the project defines its command-line flags.

Each program (`alexnet_jax.main`, `evaluate`, `predict`, `summary`, `experiments.*`) has a
`define_flags()` that its `if __name__ == "__main__":` block calls just before `app.run(main)`. Flags are
therefore defined only when a module runs as a program, so programs can import one another (a benchmark
imports the throughput experiment) without two definitions of `--config` colliding. The flags several
programs share are defined here once.
"""

from __future__ import annotations

from absl import flags
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
