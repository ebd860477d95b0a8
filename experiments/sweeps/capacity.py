"""Capacity against accuracy and cost: convolution width and dense width (parameters, FLOPs, images/s)."""

BASE_CONFIG = "configs/full_width.py"  # measured at full width, the default until the cost sweep
BASELINE = "width_1_dense_1024"
TARGET_TRAIN_ACCURACY = 0.95
VARIANTS = {
    "width_0.25": {"model.width_multiplier": 0.25},
    "width_0.5": {"model.width_multiplier": 0.5},
    "width_1_dense_1024": {},
    "width_1.5": {"model.width_multiplier": 1.5},
    "dense_256": {"model.dense_width": 256},
    "dense_4096": {"model.dense_width": 4096},
}
