"""The recipe at the default budget (2.7 epochs) and beyond it: what buys accuracy on validation.

Every run keeps a moving average of its weights (`ema_decay` 0.999): the table's plain figures are the
average's, the raw-weights columns the same runs without it, so EMA is compared on identical trajectories.
Choices are made on the validation split (5,000 images held out of the training split); the test split
is reported, never chosen on.
"""

BASE_CONFIG = "configs/default.py"
BASELINE = "baseline"
TARGET_TRAIN_ACCURACY = 0.99
_EMA = {"ema_decay": 0.999}
VARIANTS = {
    "baseline": _EMA,
    "elastic": {**_EMA, "data.elastic_alpha": 34.0, "data.elastic_sigma": 4.0},
    "no_label_smoothing": {**_EMA, "label_smoothing": 0.0},
    "lr_4e-3": {**_EMA, "learning_rate": 4e-3},
    "epochs_8": {**_EMA, "num_epochs": 8},
    "epochs_8_elastic": {**_EMA, "num_epochs": 8, "data.elastic_alpha": 34.0, "data.elastic_sigma": 4.0},
}
