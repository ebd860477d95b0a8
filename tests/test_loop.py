"""The training loop (training/loop.py): its outputs, guards, resume and metrics, in process on tiny
budgets."""

import builtins
import json
import os
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
from configs import smoke
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
  # Every checkpoint a user can load by name (best, latest) has its temperature, for both kinds of weights.
  best = trained_run.load(str(tmp_path), "best").step
  assert set(calibration.read_entries(str(tmp_path))) == {
      calibration.entry_key(weights, step) for weights in ("raw", "ema") for step in {best, final["step"]}}
  assert trained_run.load(str(tmp_path), "best", weights="raw").temperature is not None
  run = trained_run.load(str(tmp_path), "latest")
  raw = trained_run.load(str(tmp_path), "latest", weights="raw")
  assert run.weights == "ema" and raw.weights == "raw"
  assert not _same(run.variables["params"], raw.variables["params"])
  assert run.temperature == entry["temperature"]
  entries = calibration.read_entries(str(tmp_path))
  assert raw.temperature == entries[calibration.entry_key("raw", 8)]["temperature"]
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


def test_config_json_survives_a_failure_while_it_is_rewritten(tmp_path, monkeypatch):
  """Every start rewrites config.json; a failure (a full disk, a kill) in the middle must leave the old
  file whole, or the run neither resumes nor loads."""
  config = smoke.get_config()
  loop._write_config(config, str(tmp_path))
  before = (tmp_path / "config.json").read_bytes()
  real_open, real_fdopen = builtins.open, os.fdopen

  def failing(file):
    class HalfThenDiskFull:
      def write(self, text):
        file.write(text[:len(text) // 2])
        file.flush()
        raise OSError(28, "No space left on device")

      def __enter__(self):
        return self

      def __exit__(self, *exc):
        file.close()

    return HalfThenDiskFull()

  def patched_open(path, mode="r", *args, **kwargs):
    file = real_open(path, mode, *args, **kwargs)
    return failing(file) if "w" in mode and str(path).endswith("config.json") else file

  monkeypatch.setattr(builtins, "open", patched_open)
  monkeypatch.setattr(os, "fdopen", lambda *a, **k: failing(real_fdopen(*a, **k)))
  with pytest.raises(OSError, match="No space left"):
    loop._write_config(config, str(tmp_path))
  monkeypatch.undo()
  assert (tmp_path / "config.json").read_bytes() == before
  assert trained_run.load_config(str(tmp_path)).to_dict() == run_config.upgrade(json.loads(before)).to_dict()


def _tree_snapshot(root) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_finished_run_is_reported_before_anything_is_restored(synthetic_run, synthetic_config, tmp_path,
                                                                monkeypatch):
  """Rerunning a finished run's command restores nothing (a restore could fail: no permission, a library
  upgrade) and changes nothing but config.json's identical rewrite."""
  source, final = synthetic_run
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  before = _tree_snapshot(tmp_path)

  def no_restore(*args, **kwargs):
    raise AssertionError("a finished run restored a checkpoint")

  monkeypatch.setattr(checkpointing.Checkpointer, "restore", no_restore)
  assert loop.train_and_evaluate(synthetic_config, str(tmp_path)) == final
  assert _tree_snapshot(tmp_path) == before


def test_an_unreadable_checkpoint_stops_the_run_and_nothing_is_lost(synthetic_run, synthetic_config, tmp_path,
                                                                    monkeypatch):
  """An unfinished run (its final checkpoint gone) whose checkpoint cannot be read for a reason other than
  damage: one line naming it and the cause; nothing moved, metrics.jsonl and TensorBoard untouched."""
  source, _ = synthetic_run
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  shutil.rmtree(tmp_path / "checkpoints" / "8")
  before = _tree_snapshot(tmp_path)

  def denied(self, step, target):
    raise ValueError(f'PERMISSION_DENIED: Error reading local file "{self.directory}/{step}/default/d/x"')

  monkeypatch.setattr(checkpointing.Checkpointer, "restore", denied)
  with pytest.raises(checkpointing.CheckpointError, match=r"^checkpoint at step 4 in .* cannot be read "
                     r"\(ValueError: PERMISSION_DENIED"):
    loop.train_and_evaluate(synthetic_config, str(tmp_path))
  assert _tree_snapshot(tmp_path) == before
  assert not (tmp_path / "corrupt_checkpoints").exists()


@pytest.mark.slow  # a whole extra run
def test_every_checkpoint_damaged_stops_unless_asked_to_start_over(synthetic_run, synthetic_config, tmp_path):
  source, final = synthetic_run
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  shutil.rmtree(tmp_path / "checkpoints" / "8")  # unfinished: the run must restore step 4
  for path in (tmp_path / "checkpoints").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(b"")
  metrics_before = (tmp_path / "metrics.jsonl").read_bytes()
  with pytest.raises(checkpointing.AllCheckpointsDamagedError, match="--start_over"):
    loop.train_and_evaluate(synthetic_config, str(tmp_path))
  assert (tmp_path / "metrics.jsonl").read_bytes() == metrics_before
  again = loop.train_and_evaluate(synthetic_config, str(tmp_path), start_over=True)
  assert again["params_sha256"] == final["params_sha256"]  # step 0 again, the same trajectory
