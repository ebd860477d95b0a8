"""A run's config: its validation before anything runs, and `upgrade` of the configs older runs saved.

A bad value is reported as one line naming the field, so that a typo on the command line costs seconds,
not a crashed run half an hour in. Types need no check here: config files are loaded locked and typed
(ml_collections refuses a string for a float field, or a field that does not exist).

`upgrade` is the one place that knows which fields were added after runs were first saved, and what those
runs did without them: code everywhere else reads every field as configs/default.py defines it.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from alexnet_jax.data import input_pipeline
from alexnet_jax.model import alexnet, cpu_kernels, onednn_build
from alexnet_jax.training import optimizers, parallel
from configs import default


class ConfigError(ValueError):
  """A config field holds a value the run cannot use."""


def _require(condition: bool, field: str, value: Any, expectation: str) -> None:
  if not condition:
    raise ConfigError(f"config.{field}={value!r}: {expectation}")


def _check_choice(config: Any, field: str, choices: tuple[str, ...]) -> None:
  value = _get(config, field)
  _require(value in choices, field, value, f"must be one of {', '.join(choices)}")


def _get(config: Any, field: str) -> Any:
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _check_positive(config: Any, field: str, allow_zero: bool = False) -> None:
  value = _get(config, field)  # its type is the config file's (ml_collections keeps fields typed)
  expectation = "must be >= 0" if allow_zero else "must be > 0"
  _require(value >= 0 if allow_zero else value > 0, field, value, expectation)


def _check_conv_impl_available(conv_impl: str) -> None:
  try:
    cpu_kernels.resolve_conv_impl(conv_impl)
  except onednn_build.OnednnUnavailableError as error:
    raise ConfigError(f"config.model.conv_impl={conv_impl!r}: {error}") from None


def validate_config(config: Any, num_devices: int = 1, num_processes: int = 1) -> None:
  """Raises ConfigError naming the first field that holds an unusable value."""
  _check_choice(config, "model.variant", alexnet.VARIANTS)
  _check_choice(config, "model.activation", alexnet.ACTIVATIONS)
  _check_choice(config, "model.pooling", alexnet.POOLINGS)
  _check_choice(config, "model.normalization", alexnet.NORMALIZATIONS)
  _check_choice(config, "model.batch_norm_impl", alexnet.BATCH_NORM_IMPLS)
  _check_choice(config, "model.dtype", alexnet.DTYPE_CHOICES)
  _check_choice(config, "model.conv_impl", cpu_kernels.CONV_IMPLS)
  _check_conv_impl_available(config.model.conv_impl)
  _check_choice(config, "optimizer", optimizers.OPTIMIZERS)
  _check_choice(config, "schedule", optimizers.SCHEDULES)
  _check_choice(config, "parallelism", parallel.STRATEGIES)
  for field in ("batch_size", "eval_batch_size", "learning_rate", "model.width_multiplier",
                "model.num_classes", "log_every_steps", "checkpoint_every_steps", "data.elastic_sigma"):
    _check_positive(config, field)
  for field in ("weight_decay", "label_smoothing", "grad_clip_norm", "model.dense_width",
                "data.validation_size", "data.max_translate", "data.max_rotate", "data.max_scale",
                "data.elastic_alpha", "data.max_blur_sigma", "data.max_stroke", "momentum", "warmup_steps",
                "ema_decay"):
    _check_positive(config, field, allow_zero=True)
  _require(0.0 <= config.model.dropout_rate < 1.0, "model.dropout_rate", config.model.dropout_rate,
           "must be in [0, 1)")
  _require(config.ema_decay < 1.0, "ema_decay", config.ema_decay, "must be < 1 (0: no moving average)")
  _require(config.label_smoothing < 1.0, "label_smoothing", config.label_smoothing, "must be < 1")
  _require(config.data.max_stroke <= 1.0, "data.max_stroke", config.data.max_stroke,
           "must be <= 1 (1: all the way to the dilation or erosion)")
  _require(config.data.max_scale < 1.0, "data.max_scale", config.data.max_scale, "must be < 1")
  _require(0.0 < config.onecycle_pct_start < 1.0, "onecycle_pct_start", config.onecycle_pct_start,
           "must be in (0, 1)")
  _require(0.0 < config.step_decay_factor <= 1.0, "step_decay_factor", config.step_decay_factor,
           "must be in (0, 1]")
  _check_positive(config, "step_decay_every_steps")
  train_size = input_pipeline.MNIST_TRAIN_SIZE
  _require(config.data.validation_size < train_size, "data.validation_size", config.data.validation_size,
           f"must leave training examples (MNIST's train split has {train_size})")
  _require(config.num_train_steps == -1 or config.num_train_steps > 0, "num_train_steps",
           config.num_train_steps, "must be -1 (use num_epochs) or > 0")
  if config.num_train_steps == -1:
    _check_positive(config, "num_epochs")
  _require(config.eval_every_steps == -1 or config.eval_every_steps > 0, "eval_every_steps",
           config.eval_every_steps, "must be -1 (once per epoch) or > 0")
  _require(config.keep_latest_checkpoints >= 1, "keep_latest_checkpoints",
           config.keep_latest_checkpoints, "must be >= 1")
  for field in ("batch_size", "eval_batch_size"):
    _require(_get(config, field) % num_devices == 0, field, _get(config, field),
             f"must be divisible by the number of devices ({num_devices})")
  _check_positive(config, "data.num_shards", allow_zero=True)
  num_shards = config.data.num_shards or num_processes
  _require(num_shards % num_processes == 0, "data.num_shards", config.data.num_shards,
           f"must be a multiple of the number of processes ({num_processes})")
  _require(config.batch_size % num_shards == 0, "batch_size", config.batch_size,
           f"must be divisible by data.num_shards ({num_shards})")
  _require(config.parallelism != "pmap" or num_processes == 1, "parallelism", config.parallelism,
           "pmap runs on one process; use jit across processes")
  _check_positive(config, "steps_per_dispatch")
  if config.steps_per_dispatch > 1:
    _require(config.parallelism == "jit" and num_processes == 1 and num_shards == 1, "steps_per_dispatch",
             config.steps_per_dispatch, "> 1 needs parallelism=jit, one process and one data shard")


# Fields added to configs/default.py after runs were first saved, with the value that reproduces what a
# run saved without the field did. A field added with an "off" default that old runs match needs no entry.
_VALUES_BEFORE_THE_FIELD = {
    "model.conv_impl": "xla",
    "model.dtype": "float32",
    "model.batch_norm_impl": "flax",
    "ema_decay": 0.0,
    "eval_raw_during_training": True,
}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"model": {"dtype": "auto"}} -> {"model.dtype": "auto"}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def upgrade(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """The config a run saved (its config.json) completed to today's fields: the saved values, the values
  before the field for fields added since (`_VALUES_BEFORE_THE_FIELD`), configs/default.py's for the rest.
  Fields that today's config no longer has are kept as saved."""
  merged = default.get_config().to_dict()
  saved_fields = flatten(saved)
  for field, value in _VALUES_BEFORE_THE_FIELD.items():
    saved_fields.setdefault(field, value)
  for field, value in saved_fields.items():
    *parents, name = field.split(".")
    section = merged
    for parent in parents:
      section = section.setdefault(parent, {})
    section[name] = value
  return ml_collections.ConfigDict(merged)
