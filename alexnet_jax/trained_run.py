"""A training run loaded for inference: its config, its network, and one checkpoint's parameters and
batch statistics, without the optimizer state.

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

from alexnet_jax import checkpointing, input_pipeline, models


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """`variables` is what `model.apply` takes: {"params": ..., "batch_stats": ...} ({} without BN)."""

  workdir: str
  config: ml_collections.ConfigDict
  model: models.AlexNet
  variables: dict[str, Any]
  step: int

  def logits_fn(self):
    """A jitted function: uint8 images, or float in [0, 255], (N, 28, 28, 1) -> logits (N, classes);
    differentiable with respect to the images."""
    apply = jax.jit(lambda variables, images: self.model.apply(
        variables, input_pipeline.normalize(images), train=False))
    # The weights go in as arguments: closed over, they would be compiled into the program as constants.
    return lambda images: apply(self.variables, images)

  def probabilities_fn(self):
    """A jitted function: uint8 images (N, 28, 28, 1) -> softmax probabilities (N, classes)."""
    logits = self.logits_fn()
    return lambda images: jax.nn.softmax(logits(images))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (its workdir's config.json)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise checkpointing.CheckpointError(f"{path} not found: is {workdir} a training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load(workdir: str, which: str = "best") -> TrainedRun:
  """The run in `workdir` at checkpoint `which` (best | latest | a step number)."""
  config = load_config(workdir)
  model = models.create_model(config.model)
  # Shapes and dtypes only: nothing is initialised or compiled to learn what to restore.
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)},
      jnp.zeros((1, *models.INPUT_SHAPE), jnp.float32), train=False))
  target = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    step = checkpointing.resolve_step(checkpointer, which)
    variables = checkpointer.restore_subtree(step, target)
  finally:
    checkpointer.close()
  return TrainedRun(os.path.abspath(workdir), config, model, variables, step)
