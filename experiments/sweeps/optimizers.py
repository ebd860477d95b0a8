"""Optimizers and schedules: the default AdamW + one-cycle against the paper's SGD with momentum.

SGD here is the paper's update rule: plain (classical, not Nesterov) momentum 0.9 and L2 weight decay 5e-4,
so that the sweep compares AdamW with the paper's optimizer rather than with the default config's Nesterov
variant. Its learning rates and schedules are this sweep's own, not the paper's manual step decay.
"""

BASE_CONFIG = "configs/full_width.py"  # measured at full width, the default until the cost sweep
BASELINE = "adamw_onecycle"
TARGET_TRAIN_ACCURACY = 0.95
_SGD = {"optimizer": "sgd", "learning_rate": 0.05, "weight_decay": 5e-4, "nesterov": False}
VARIANTS = {
    "adamw_onecycle": {},
    "adamw_warmup_cosine": {"schedule": "warmup_cosine"},
    "adamw_constant": {"schedule": "constant", "learning_rate": 1e-3},
    "sgd_onecycle": _SGD,
    "sgd_warmup_cosine": {**_SGD, "schedule": "warmup_cosine"},
    "sgd_constant": {**_SGD, "schedule": "constant", "learning_rate": 0.01},
}
