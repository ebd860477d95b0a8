"""A bad config value is refused before any compute, with one line naming the field."""

import subprocess
import sys
import time

import pytest

from alexnet_jax.training import optimizers, parallel, run_config
from configs import default, original, smoke
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("get_config", [default.get_config, smoke.get_config, original.get_config])
def test_shipped_configs_are_valid(get_config):
  run_config.validate_config(get_config())


@pytest.mark.parametrize("field, value", [
    ("batch_size", -1),
    ("batch_size", 0),
    ("eval_batch_size", 0),
    ("learning_rate", 0.0),
    ("model.variant", "vgg"),
    ("model.activation", "gelu"),
    ("model.pooling", "avg"),
    ("model.normalization", "layernorm"),
    ("model.batch_norm_impl", "fused"),
    ("model.dtype", "float16"),
    ("model.conv_impl", "cudnn"),
    ("model.dropout_rate", 1.0),
    ("model.width_multiplier", -0.5),
    ("optimizer", "lion"),
    ("schedule", "linear"),
    ("num_train_steps", 0),
    ("num_train_steps", -5),
    ("data.validation_size", 60000),
    ("data.validation_size", -1),
    ("label_smoothing", 1.0),
    ("eval_every_steps", 0),
    ("keep_latest_checkpoints", 0),
    ("parallelism", "tpu_magic"),
    ("data.num_shards", -2),
    ("steps_per_dispatch", 0),
    ("data.elastic_alpha", -1.0),
    ("data.elastic_sigma", 0.0),
    ("data.max_blur_sigma", -0.5),
    ("data.max_stroke", -0.1),
    ("data.max_stroke", 1.5),
    ("ema_decay", 1.0),
])
def test_bad_value_names_the_field(field, value):
  config = default.get_config()
  section = config
  *parents, leaf = field.split(".")
  for parent in parents:
    section = section[parent]
  section[leaf] = value
  with pytest.raises(run_config.ConfigError, match=rf"^config\.{field}="):
    run_config.validate_config(config)


def test_num_epochs_is_checked_only_when_it_is_used():
  config = default.get_config()
  config.num_epochs = 0
  with pytest.raises(run_config.ConfigError, match="num_epochs"):
    run_config.validate_config(config)
  config.num_train_steps = 10
  run_config.validate_config(config)


def test_batch_must_divide_over_devices():
  config = default.get_config()
  config.batch_size = 130
  run_config.validate_config(config, num_devices=2)
  with pytest.raises(run_config.ConfigError, match=r"config\.batch_size=130: .*4"):
    run_config.validate_config(config, num_devices=4)


def test_data_shards_must_fit_processes_and_batch():
  config = default.get_config()
  run_config.validate_config(config, num_devices=2, num_processes=2)
  config.data.num_shards = 3
  with pytest.raises(run_config.ConfigError, match=r"config\.data\.num_shards=3: .*processes \(2\)"):
    run_config.validate_config(config, num_devices=2, num_processes=2)
  config.data.num_shards = 4
  config.batch_size = 130
  with pytest.raises(run_config.ConfigError, match=r"config\.batch_size=130: .*num_shards \(4\)"):
    run_config.validate_config(config, num_devices=2, num_processes=1)
  config.data.num_shards = 0
  config.batch_size = 128
  config.parallelism = "pmap"
  with pytest.raises(run_config.ConfigError, match=r"config\.parallelism='pmap': .*one process"):
    run_config.validate_config(config, num_devices=2, num_processes=2)


def test_several_steps_per_dispatch_need_one_process_under_jit():
  config = default.get_config()
  config.steps_per_dispatch = 8
  run_config.validate_config(config, num_devices=2)
  with pytest.raises(run_config.ConfigError, match=r"config\.steps_per_dispatch=8: .*one process"):
    run_config.validate_config(config, num_devices=2, num_processes=2)
  config.parallelism = "pmap"
  with pytest.raises(run_config.ConfigError, match=r"config\.steps_per_dispatch=8: .*jit"):
    run_config.validate_config(config)


@pytest.mark.slow  # a subprocess
def test_cli_rejects_bad_value_in_one_line_before_any_compute(tmp_path):
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.main", "--config", "configs/default.py",
       "--workdir", str(tmp_path / "run"), "--config.batch_size=-3"],
      cwd=REPO_ROOT, capture_output=True, check=False, text=True, timeout=120)
  assert result.returncode != 0
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line == "error: config.batch_size=-3: must be > 0"
  assert time.monotonic() - start < 60
  assert not (tmp_path / "run").exists(), "nothing is written for a refused config"


def test_the_choices_checked_are_the_ones_the_code_builds():
  """One list of names per choice, defined beside the code that builds them."""
  config = smoke.get_config()
  for name in optimizers.OPTIMIZERS:
    config.optimizer = name
    run_config.validate_config(config)
    optimizers.create_optimizer(config, 10)
  for name in optimizers.SCHEDULES:
    config.schedule = name
    run_config.validate_config(config)
    optimizers.create_schedule(config, 10)(5)
  for name in parallel.STRATEGIES:
    config.parallelism = name
    run_config.validate_config(config)
    parallel.create_strategy(name)


def test_upgrade_completes_an_older_runs_config_with_what_it_did():
  """A config.json saved before some fields existed: saved values kept, the added fields at the values
  that reproduce what the run did, fields no longer in configs/default.py kept as saved."""
  saved = default.get_config().to_dict()
  saved["learning_rate"] = 0.05
  saved["retired_field"] = 7
  for section, name in (("model", "conv_impl"), ("model", "dtype"), ("model", "batch_norm_impl"),
                        (None, "ema_decay"), (None, "eval_raw_during_training"), ("data", "max_stroke")):
    del (saved[section] if section else saved)[name]
  config = run_config.upgrade(saved)
  assert config.learning_rate == 0.05 and config.retired_field == 7
  model = config.model
  assert (model.conv_impl, model.dtype, model.batch_norm_impl) == ("xla", "float32", "flax")
  assert config.ema_decay == 0.0 and config.eval_raw_during_training is True
  assert config.data.max_stroke == 0.0  # added "off": today's default is what the run did
  run_config.validate_config(config)
  # A config saved today comes back as it was.
  today = default.get_config()
  assert run_config.upgrade(today.to_dict()).to_dict() == today.to_dict()
