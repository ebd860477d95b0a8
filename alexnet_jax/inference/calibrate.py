"""The calibration stage: temperatures fitted on validation and stored for every checkpoint a user can load.

`python -m alexnet_jax.main` runs it after training: for the checkpoints that `predict`, `serve`,
`evaluate` and `export` load by name (best and latest) and for each kind of weights the run kept (raw,
and their moving average where kept), so that none of them serves uncalibrated probabilities. It can be
run on its own for an existing run (`calibrate_run(workdir)`, or one checkpoint: `calibrate_checkpoint`),
and `evaluate --checkpoint STEP` fits an older step on demand. The fit and the file it is stored in are
calibration.py's. An entry already stored is kept as it is: nothing is restored to find that out.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging

from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import calibration, trained_run
from alexnet_jax.training import checkpointing


def _loadable(workdir: str, config: Any) -> list[tuple[int, str]]:
  """(step, weights) of every checkpoint loadable by name (best, latest) and every kind of weights kept."""
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    steps = {checkpointing.resolve_step(checkpointer, "latest")}
    if checkpointer.best_step() is not None:
      steps.add(checkpointer.best_step())
  finally:
    checkpointer.close()
  kinds = ["raw"] + (["ema"] if trained_run.resolve_weights(config, "auto") == "ema" else [])
  return [(step, weights) for step in sorted(steps) for weights in kinds]


def calibrate_checkpoint(workdir: str, step: int, weights: str, splits: dict[str, Any] | None = None, *,
                         store: bool = True) -> dict[str, Any] | None:
  """The calibration entry of one checkpoint's weights ("raw" or "ema"): the stored one, else one fitted
  now on validation (and stored unless `store` is False: every process but the first of a multi-process
  run). None when the run holds no validation split to fit on. `splits` saves loading the data again."""
  stored = calibration.read_entries(workdir).get(calibration.entry_key(weights, step))
  if stored is not None:
    return stored
  run = trained_run.load(workdir, str(step), weights, warn_if_uncalibrated=False)
  if splits is None:
    splits = input_pipeline.load_mnist(run.config.data, run.config.eval_batch_size)
  return fit(run, splits, store=store)


def fit(run: trained_run.TrainedRun, splits: dict[str, Any], *, with_test: bool = True,
        store: bool = True) -> dict[str, Any] | None:
  """The temperature of a loaded run (its weights, step and test-time augmentation) fitted on the
  validation split and stored (unless `store` is False); the test split's figures beside it unless
  `with_test` is False. None, with a warning, when there is no validation split."""
  if "validation" not in splits:
    logging.warning("%s: no validation split (data.validation_size=0): probabilities stay uncalibrated",
                    run.workdir)
    return None
  batch_size = run.config.eval_batch_size
  test = run.split_logits(splits["test"], batch_size) if with_test and "test" in splits else None
  entry = calibration.calibrate(run.workdir, run.weights, run.step,
                                run.split_logits(splits["validation"], batch_size), test,
                                tta_radius=run.tta_radius, store=store)
  logging.info("%s: temperature %.4f for the %s weights at step %d (fitted on validation; ECE %.4f -> "
               "%.4f)", run.workdir, entry["temperature"], run.weights, run.step, entry["val_ece_before"],
               entry["val_ece_after"])
  return entry


def calibrate_run(workdir: str, *, store: bool = True) -> list[dict[str, Any]]:
  """Every loadable checkpoint's entries (best and latest; raw and moving-average weights where kept),
  fitted where missing; the data is loaded once, and only if something is missing."""
  config = trained_run.load_config(workdir)
  loadable = _loadable(workdir, config)
  stored = calibration.read_entries(workdir)
  missing = [key for key in loadable if calibration.entry_key(key[1], key[0]) not in stored]
  splits = input_pipeline.load_mnist(config.data, config.eval_batch_size) if missing else None
  entries = [calibrate_checkpoint(workdir, step, weights, splits, store=store) for step, weights in loadable]
  return [entry for entry in entries if entry is not None]
