"""The 2012 AlexNet paper's design claims, re-tested on MNIST, one knob at a time from the default recipe.

Krizhevsky et al. (2012) claimed: ReLUs train several times faster than tanh (section 3.1; measured here as
steps to a target training accuracy); overlapping pooling lowers error slightly (3.4); local response
normalisation lowers error (3.3); dropout curbs overfitting (4.2); data augmentation curbs overfitting
(4.1). Batch norm (2015) is the modern alternative to LRN.
"""

BASE_CONFIG = "configs/default.py"
BASELINE = "baseline"
TARGET_TRAIN_ACCURACY = 0.95
VARIANTS = {
    "baseline": {},  # ReLU, overlapping 3x3/2 pooling, no normalisation, dropout 0.5, augmentation
    "tanh": {"model.activation": "tanh"},
    "non_overlapping_pool": {"model.pooling": "non_overlapping"},
    "lrn": {"model.normalization": "lrn"},
    "batchnorm": {"model.normalization": "batchnorm"},
    "no_dropout": {"model.dropout_rate": 0.0},
    "no_augmentation": {"data.augment": False},
}
