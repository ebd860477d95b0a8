"""Validation of a run's config, before any data is read or anything is compiled.

A bad value is reported as one line naming the field, so that a typo on the command line costs seconds,
not a crashed run half an hour in.
"""

from __future__ import annotations

from typing import Any

from alexnet_jax import cpu_kernels, input_pipeline, models, onednn_build, optimizers, parallel


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
  value = _get(config, field)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  _require(ok, field, value, "must be >= 0" if allow_zero else "must be > 0")


def _check_conv_impl_available(conv_impl: str) -> None:
  try:
    cpu_kernels.resolve_conv_impl(conv_impl)
  except onednn_build.OnednnUnavailableError as error:
    raise ConfigError(f"config.model.conv_impl={conv_impl!r}: {error}") from None


def validate_config(config: Any, num_devices: int = 1, num_processes: int = 1) -> None:
  """Raises ConfigError naming the first field that holds an unusable value."""
  _check_choice(config, "model.variant", models.VARIANTS)
  _check_choice(config, "model.activation", models.ACTIVATIONS)
  _check_choice(config, "model.pooling", models.POOLINGS)
  _check_choice(config, "model.normalization", models.NORMALIZATIONS)
  _check_choice(config, "model.batch_norm_impl", models.BATCH_NORM_IMPLS)
  _check_choice(config, "model.dtype", models.DTYPE_CHOICES)
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
