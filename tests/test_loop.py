"""The training loop (training/loop.py): its outputs, guards, resume and metrics, in process on tiny
budgets."""

import platform
import shutil
import threading

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.inference import calibration, trained_run
from alexnet_jax.model import alexnet, cpu_kernels, onednn_build
from alexnet_jax.training import checkpointing, loop, metric_logging, optimizers, run_config, steps
from tests.conftest import saved_steps, tensorboard_steps, train_and_calibrate


def _same(tree_a, tree_b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(jnp.array_equal, tree_a, tree_b)))


def test_smoke_run_writes_the_promised_outputs(smoke_config, tmp_path):
  workdir = str(tmp_path / "run")
  final = loop.train_and_evaluate(smoke_config, workdir)
  records = metric_logging.read_metrics(workdir)
  assert final == {k: v for k, v in records[-1].items()}
  assert final["test_count"] == 10000 and final["val_count"] == 5000
  assert len(final["params_sha256"]) == 64 and final["step"] == smoke_config.num_train_steps
  # The libraries that decide the bits, as this process has them.
  versions = final["library_versions"]
  assert versions["jax"] == jax.__version__ and versions["flax"] == flax.__version__
  assert versions["python"] == platform.python_version()
  uses_onednn = cpu_kernels.resolve_conv_impl(smoke_config.model.conv_impl) == "onednn"
  assert versions["onednn"] == (onednn_build.load().onednn_version if uses_onednn else None)
  train_records = [r for r in records if "train_loss" in r]
  assert {"step", "epoch", "train_loss", "train_accuracy", "images_per_s"} <= set(train_records[0])
  eval_records = [r for r in records if "val_accuracy" in r]
  assert [r["step"] for r in eval_records] == [20, 40]
  assert all(r["val_count"] == 5000 for r in eval_records)
  for name in ("config.json", "tensorboard", "checkpoints"):
    assert (tmp_path / "run" / name).exists()
  logged_steps = [r["step"] for r in train_records]
  assert tensorboard_steps(tmp_path / "run")["train_loss"] == logged_steps == [10, 20, 30, 40]
  # Running the finished run again changes nothing.
  again = loop.train_and_evaluate(smoke_config, workdir)
  assert again["params_sha256"] == final["params_sha256"]
  assert len(metric_logging.read_metrics(workdir)) == len(records)


def test_divergence_stops_with_a_clear_error_and_keeps_only_finite_checkpoints(smoke_config, tmp_path):
  smoke_config.optimizer = "sgd"
  smoke_config.learning_rate = 1e6
  smoke_config.checkpoint_every_steps = 5
  smoke_config.log_every_steps = 5
  workdir = tmp_path / "run"
  with pytest.raises(loop.NonFiniteLossError, match="non-finite .* step"):
    loop.train_and_evaluate(smoke_config, str(workdir))
  checkpointer = checkpointing.Checkpointer(str(workdir / "checkpoints"), read_only=True)
  template = steps.create_train_state(alexnet.create_model(smoke_config.model),
                                      optimizers.create_optimizer(smoke_config, 100), jax.random.key(0),
                                      ema=bool(smoke_config.ema_decay))
  for step in checkpointer.all_steps():
    restored = checkpointer.restore(step, template)
    assert bool(steps.all_finite(restored.params)), f"checkpoint {step} holds non-finite params"


def test_resuming_with_another_config_is_refused(smoke_config, tmp_path):
  smoke_config.num_train_steps = 4
  smoke_config.eval_every_steps = 4
  loop.train_and_evaluate(smoke_config, str(tmp_path / "run"))
  smoke_config.learning_rate = 0.5
  with pytest.raises(run_config.ConfigError, match=r"config\.learning_rate: differs"):
    loop.train_and_evaluate(smoke_config, str(tmp_path / "run"))


def test_several_steps_per_dispatch_train_like_one_per_dispatch(smoke_config, tmp_path):
  """lax.scan over steps: the same batches, keys and updates; logs, evaluations and checkpoints where
  one step per dispatch puts them; numerics equal up to the last bits."""
  smoke_config.num_train_steps = 12
  smoke_config.log_every_steps = smoke_config.checkpoint_every_steps = 6
  smoke_config.eval_every_steps = 12
  one = loop.train_and_evaluate(smoke_config, str(tmp_path / "one"))
  smoke_config.steps_per_dispatch = 4  # dispatches of 4 + 2 steps between boundaries
  many = loop.train_and_evaluate(smoke_config, str(tmp_path / "many"))
  records = {name: metric_logging.read_metrics(str(tmp_path / name)) for name in ("one", "many")}
  assert [r["step"] for r in records["many"]] == [r["step"] for r in records["one"]]
  for a, b in zip(records["one"], records["many"], strict=True):
    for key in ("train_loss", "val_loss", "test_loss"):
      if key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4)
  assert abs(many["test_accuracy"] - one["test_accuracy"]) <= 0.002
  assert sorted(p.name for p in (tmp_path / "many" / "checkpoints").iterdir() if p.name.isdigit()) == [
      "12", "6"]


# ----------------------------------------------------------------------------------------------------
# The loop on synthetic MNIST (fast tier).
# ----------------------------------------------------------------------------------------------------


def test_loop_writes_metrics_checkpoints_and_tensorboard_once_per_step(synthetic_run):
  workdir, final = synthetic_run
  records = metric_logging.read_metrics(str(workdir))
  assert [r["step"] for r in records if "train_loss" in r] == [2, 4, 6, 8]
  assert [r["step"] for r in records if "val_accuracy" in r] == [4, 8]
  assert final["test_count"] == 10000 and final["val_count"] == 5000 and len(final["params_sha256"]) == 64
  assert final["test_accuracy"] > 0.2, "learning: chance is 0.1 (+-0.003 over 10,000 images)"
  assert saved_steps(workdir) == [4, 8]
  events = tensorboard_steps(workdir)
  assert events["train_loss"] == [2, 4, 6, 8] and events["val_accuracy"] == [4, 8]


def test_resume_leaves_tensorboard_agreeing_with_metrics(synthetic_run, synthetic_config, tmp_path):
  """A run that died after step 8 was logged but before its checkpoint: the resumed run repeats steps
  5-8, and TensorBoard, like metrics.jsonl, shows each of them once."""
  source, first = synthetic_run
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  shutil.rmtree(tmp_path / "checkpoints" / "8")
  resumed = loop.train_and_evaluate(synthetic_config, str(tmp_path))
  assert resumed["params_sha256"] == first["params_sha256"]
  assert [r["step"] for r in metric_logging.read_metrics(str(tmp_path)) if "train_loss" in r] == [2, 4, 6, 8]
  events = tensorboard_steps(tmp_path)
  assert events["train_loss"] == [2, 4, 6, 8] and events["val_accuracy"] == [4, 8]


@pytest.mark.slow  # a whole extra run
def test_a_run_with_ema_records_both_and_ships_the_average(synthetic_config, tmp_path):
  """With ema_decay > 0 the plain metric names are the moving average's, raw_ ones the weights' (at the end
  only, as eval_raw_during_training is off); the best checkpoint is ranked by the average; trained_run
  loads it by default and the calibration stage stores its temperature."""
  synthetic_config.ema_decay = 0.9
  assert not synthetic_config.eval_raw_during_training
  final = train_and_calibrate(synthetic_config, str(tmp_path))
  assert {"val_accuracy", "raw_val_accuracy", "test_accuracy", "raw_test_accuracy"} <= set(final)
  evaluations = [r for r in metric_logging.read_metrics(str(tmp_path)) if "val_accuracy" in r]
  assert [(r["step"], "raw_val_accuracy" in r) for r in evaluations] == [(4, False), (8, True)]
  assert final["val_count"] == 5000 and final["test_count"] == 10000
  # The temperature minimises validation NLL over a range holding T = 1, so validation can only gain (up
  # to rounding); the test split of an 8-step synthetic run has no such guarantee and is only reported.
  entry = calibration.read_entries(str(tmp_path))[calibration.entry_key("ema", final["step"])]
  assert entry["val_nll_after"] <= entry["val_nll_before"] + 1e-12
  assert entry["weights"] == "ema" and entry["checkpoint_step"] == final["step"]
  run = trained_run.load(str(tmp_path), "latest")
  raw = trained_run.load(str(tmp_path), "latest", weights="raw")
  assert run.weights == "ema" and raw.weights == "raw"
  assert not _same(run.variables["params"], raw.variables["params"])
  assert run.temperature == entry["temperature"] and raw.temperature is None
  assert trained_run.load(str(tmp_path), "best").step in (4, 8)
  # Resumed from step 4, the average continues where it was: the same weights, the same average.
  shutil.rmtree(tmp_path / "checkpoints" / "8")
  resumed = loop.train_and_evaluate(synthetic_config, str(tmp_path))
  assert resumed["params_sha256"] == final["params_sha256"]
  assert resumed["val_accuracy"] == final["val_accuracy"] and resumed["val_loss"] == final["val_loss"]


def test_weights_that_a_run_does_not_have_are_refused(synthetic_run):
  workdir, _ = synthetic_run
  with pytest.raises(checkpointing.CheckpointError, match="--weights=ema: this run kept no moving average"):
    trained_run.load(str(workdir), "latest", weights="ema")


@pytest.mark.slow  # a whole extra run
def test_the_loop_runs_from_a_thread_other_than_the_main_one(synthetic_config, tmp_path):
  """Notebooks and servers call library functions from worker threads, where signal handlers cannot be
  installed: the loop then runs without SIGTERM handling instead of failing."""
  synthetic_config.num_train_steps = synthetic_config.eval_every_steps = 2
  outcome = {}

  def target():
    try:
      outcome["record"] = loop.train_and_evaluate(synthetic_config, str(tmp_path))
    except Exception as e:  # noqa: BLE001 - reported to the main thread below.
      outcome["error"] = e

  thread = threading.Thread(target=target)
  thread.start()
  thread.join(timeout=300)
  assert "error" not in outcome, outcome.get("error")
  assert outcome["record"]["step"] == synthetic_config.num_train_steps
