"""A training run loaded for inference: its config, its network, one checkpoint's parameters and batch
statistics (the moving average of them when the run kept one), without the optimizer state, and the
temperature that calibrates its probabilities (alexnet_jax/inference/calibration.py).

Evaluation, prediction and export all start here, so that none of them needs to rebuild an optimizer
only to restore a whole TrainState and throw most of it away.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import calibration, test_time_augmentation
from alexnet_jax.model import alexnet, cpu_kernels, onednn_build
from alexnet_jax.training import checkpointing, run_config

WEIGHTS_CHOICES = ("auto", "raw", "ema")


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """`variables` is what `model.apply` takes: {"params": ..., "batch_stats": ...} ({} without BN).

  `weights` says which: "raw" or "ema" (their moving average). `temperature` divides the logits before
  the softmax (None: no calibration is stored for this checkpoint; probabilities are then the raw ones).
  """

  workdir: str
  config: ml_collections.ConfigDict
  model: alexnet.AlexNet
  variables: dict[str, Any]
  step: int
  weights: str = "raw"
  temperature: float | None = None
  tta_radius: int = 0

  def logits_fn(self):
    """A jitted function: uint8 images, or float in [0, 255], (N, 28, 28, 1) -> logits (N, classes);
    differentiable with respect to the images."""
    apply = jax.jit(lambda variables, images: test_time_augmentation.averaged_log_probabilities_fn(
        lambda views: self._apply(variables, views), self.tta_radius)(images))
    # The weights go in as arguments: closed over, they would be compiled into the program as constants.
    return lambda images: apply(self.variables, images)

  def probabilities_fn(self, calibrated: bool = True):
    """A jitted function: uint8 images (N, 28, 28, 1) -> softmax probabilities (N, classes), of the
    logits divided by the run's temperature where one is stored (unless `calibrated=False`)."""
    logits = self.logits_fn()
    temperature = self._temperature(calibrated)
    return lambda images: jax.nn.softmax(logits(images) / temperature)

  def probabilities_and_features_fn(self):
    """A jitted function: uint8 images (N, 28, 28, 1) -> (calibrated probabilities, the penultimate layer's
    activations), from one forward pass of one view (no test-time augmentation)."""
    temperature = self._temperature(calibrated=True)

    @jax.jit
    def apply(variables, images):
      logits, state = self._apply(variables, images, mutable=["intermediates"])
      return jax.nn.softmax(logits / temperature), state["intermediates"]["features"][0]

    return lambda images: apply(self.variables, images)

  def _apply(self, variables: dict[str, Any], images: jax.Array, **kwargs: Any) -> Any:
    """One view of uint8 (or float in [0, 255]) images through the model in inference mode."""
    return self.model.apply(variables, input_pipeline.normalize(images), train=False, **kwargs)

  def _temperature(self, calibrated: bool) -> float:
    return self.temperature if calibrated and self.temperature is not None else 1.0

  def split_logits(self, split: input_pipeline.Split, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every real (unmasked) example of a split."""
    logits = self.logits_fn()
    outputs = [logits(batch["image"]) for batch in input_pipeline.eval_batches(split, batch_size)]
    keep = np.asarray(split.mask) > 0
    return np.concatenate(jax.device_get(outputs))[keep], np.asarray(split.labels)[keep]


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (its workdir's config.json), completed to today's fields."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise checkpointing.CheckpointError(f"{path} not found: is {workdir} a training workdir?")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise checkpointing.CheckpointError(f"{path} cannot be read ({checkpointing.describe(e)})") from None
  if not isinstance(saved, dict):
    raise checkpointing.CheckpointError(f"{path} holds no config (a JSON {type(saved).__name__})")
  return run_config.upgrade(saved)


def _inference_model(config: ml_collections.ConfigDict) -> alexnet.AlexNet:
  """The run's network. A run trained with conv_impl=onednn, loaded where the extension cannot be had,
  gets XLA's convolutions (the same parameters and function, to rounding) and one warning line."""
  if config.model.conv_impl == "onednn":
    try:
      cpu_kernels.resolve_conv_impl("onednn")
    except onednn_build.OnednnUnavailableError as e:
      logging.warning("trained with conv_impl=onednn, unavailable here (%s): XLA's convolutions instead", e)
      config = ml_collections.ConfigDict(config.to_dict())
      config.model.conv_impl = "xla"
  return alexnet.create_model(config.model)


def _restore(checkpointer: checkpointing.Checkpointer, which: str, target: Any) -> tuple[int, Any]:
  """(step, variables) of checkpoint `which`. For `latest` and `best`, a checkpoint proven damaged is
  passed over for the newest one that restores, with a warning (nothing is moved: inference only reads);
  a step asked for by number, and any failure that is not damage, is a one-line CheckpointError."""
  step = checkpointing.resolve_step(checkpointer, which)
  candidates = [step] + ([s for s in reversed(checkpointer.all_steps()) if s != step]
                         if which in checkpointing.CHECKPOINT_CHOICES else [])
  for candidate in candidates:  # the last one returns or raises
    try:
      return candidate, checkpointer.restore_subtree(candidate, target)
    except Exception as e:  # noqa: BLE001 - sorted into damage and everything else
      if not checkpointing.is_damage(e) or candidate == candidates[-1]:
        raise checkpointing.CheckpointError(
            f"checkpoint at step {candidate} in {checkpointer.directory} cannot be read "
            f"({checkpointing.describe(e)})") from None
      logging.warning("checkpoint at step %d in %s is damaged (%s); using the one before it", candidate,
                      checkpointer.directory, checkpointing.describe(e))


def resolve_weights(config: ml_collections.ConfigDict, weights: str) -> str:
  """auto -> the run's model: "ema" if it kept a moving average (config.ema_decay > 0), else "raw"."""
  has_ema = bool(config.ema_decay)
  if weights not in WEIGHTS_CHOICES:
    raise checkpointing.CheckpointError(
        f"--weights={weights!r}: expected one of {', '.join(WEIGHTS_CHOICES)}")
  if weights == "ema" and not has_ema:
    raise checkpointing.CheckpointError("--weights=ema: this run kept no moving average (ema_decay 0)")
  if weights == "auto":
    return "ema" if has_ema else "raw"
  return weights


def load(workdir: str, which: str = "best", weights: str = "auto", tta_radius: int = 0, *,
         warn_if_uncalibrated: bool = True) -> TrainedRun:
  """The run in `workdir` at checkpoint `which` (best | latest | a step number), its `weights` (auto |
  raw | ema), predicting with test-time augmentation of `tta_radius` (0: one view), with the temperature
  stored for them (see calibration.py)."""
  if tta_radius < 0:
    raise checkpointing.CheckpointError(f"--tta_radius={tta_radius}: expected 0 (off) or more pixels")
  config = load_config(workdir)
  weights = resolve_weights(config, weights)
  model = _inference_model(config)
  # Shapes and dtypes only: nothing is initialised or compiled to learn what to restore.
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)},
      jnp.zeros((1, *alexnet.INPUT_SHAPE), jnp.float32), train=False))
  target = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
  if weights == "ema":  # TrainState.ema holds the same tree
    target = {"ema": target}
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    step, variables = _restore(checkpointer, which, target)
  finally:
    checkpointer.close()
  if weights == "ema":
    variables = variables["ema"]
  temperature = calibration.stored_temperature(workdir, weights, step, tta_radius)
  if temperature is None and warn_if_uncalibrated:
    logging.warning("%s: no temperature stored for %s: probabilities uncalibrated (python -m "
                    "alexnet_jax.evaluate fits one)", workdir,
                    calibration.entry_key(weights, step, tta_radius))
  return TrainedRun(os.path.abspath(workdir), config, model, variables, step, weights, temperature,
                    tta_radius)
