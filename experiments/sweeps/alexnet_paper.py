"""The 2012 AlexNet paper's design claims, re-tested on MNIST, one knob at a time from the default recipe.

Krizhevsky et al. (2012) claimed: ReLUs train several times faster than tanh (section 3.1; measured here as
steps to a target training accuracy); overlapping pooling lowers error slightly (3.4); local response
normalisation lowers error (3.3); dropout curbs overfitting (4.2); data augmentation curbs overfitting
(4.1). Batch norm (2015) is the modern alternative to LRN.
"""

BASE_CONFIG = "configs/full_width.py"  # measured at full width, the default until the cost sweep
BASELINE = "baseline"
TARGET_TRAIN_ACCURACY = 0.95
# The paper's network: no normalisation layer unless a variant adds one, and its raw weights (a moving
# average of them means nothing over these short runs). Spelled out so the sweep keeps its meaning whatever
# configs/default.py becomes (the default has batch norm and weight averaging since the recipe sweep).
_PAPER = {"model.normalization": "none", "ema_decay": 0.0}
VARIANTS = {
    "baseline": _PAPER,  # ReLU, overlapping 3x3/2 pooling, no normalisation, dropout 0.5, augmentation
    "tanh": {**_PAPER, "model.activation": "tanh"},
    "non_overlapping_pool": {**_PAPER, "model.pooling": "non_overlapping"},
    "lrn": {**_PAPER, "model.normalization": "lrn"},
    "batchnorm": {**_PAPER, "model.normalization": "batchnorm"},
    "no_dropout": {**_PAPER, "model.dropout_rate": 0.0},
    "no_augmentation": {**_PAPER, "data.augment": False},
}
