"""The calibration stage: the temperature of a trained run's checkpoint, fitted on validation and stored.

`python -m alexnet_jax.main` runs it after training, for the checkpoint training ended on; it can be run on
its own for any existing run (`calibrate_run(workdir, checkpoint)`), and `evaluate` runs it for a
checkpoint that has no temperature yet. The fit and the file it is stored in are calibration.py's.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import calibration, trained_run


def calibrate_run(workdir: str, checkpoint: str = "latest", weights: str = "auto", *,
                  store: bool = True) -> dict[str, Any] | None:
  """Fits and stores the temperature of `checkpoint` (best | latest | a step) of the run in `workdir`,
  with its `weights` (auto: the run's model), and returns the calibration entry: the temperature and
  the validation and test splits' calibration error before and after it. An entry already stored is
  returned as it is. None when the run holds no validation split to fit on. `store=False` (every process
  but the first of a multi-process run) computes the entry without writing it."""
  run = trained_run.load(workdir, checkpoint, weights, warn_if_uncalibrated=False)
  stored = calibration.read_entries(workdir).get(calibration.entry_key(run.weights, run.step))
  if stored is not None:
    return stored
  batch_size = run.config.eval_batch_size
  splits = input_pipeline.load_mnist(run.config.data, batch_size)
  if "validation" not in splits:
    logging.warning("%s: no validation split (data.validation_size=0): probabilities stay uncalibrated",
                    workdir)
    return None
  test = run.split_logits(splits["test"], batch_size) if "test" in splits else None
  entry = calibration.calibrate(workdir, run.weights, run.step, run.split_logits(splits["validation"],
                                                                                 batch_size), test,
                                store=store)
  logging.info("calibration of %s weights at step %d: temperature %.4f (fitted on validation); test "
               "calibration error %.4f -> %.4f", run.weights, run.step, entry["temperature"],
               entry.get("test_ece_before", float("nan")), entry.get("test_ece_after", float("nan")))
  return entry
