"""Cost against accuracy: the network's width and the epochs it trains, towards a default that trains within
30 minutes on a 2-core CPU without native bfloat16 (issue 34).

Every variant spells out its width and epochs, so the sweep means the same whatever configs/default.py later
becomes; everything else is the default recipe. Chosen on the validation split; the test split is reported.
Costs (forward FLOPs, parameters, images/s) come with each run. How the default was chosen: docs/recipe.md;
the figures and the plot: docs/results/cost.md.
"""

BASE_CONFIG = "configs/default.py"
BASELINE = "width_1_epochs_10"  # the default until this sweep
TARGET_TRAIN_ACCURACY = 0.99
COST_CURVES = "model.width_multiplier"  # cost.png: a line per width
# The full width (`width_1_epochs_10`), drawn from its three published seeds (docs/results/recipe.md, the
# default's three seeds, Intel Xeon) rather than trained again: training TFLOP, validation accuracies.
COST_REFERENCES = {"1.0 (published seeds)": (436, [0.9960, 0.9968, 0.9970])}


def _point(width: float, epochs: float) -> dict:
  return {"model.width_multiplier": width, "num_epochs": epochs}


# Epochs per width reach up to what a 2-core AVX2 CPU trains in about 30 minutes in float32 (projected from
# experiments.throughput under ONEDNN_MAX_CPU_ISA=AVX2: docs/results/cost.md).
VARIANTS = {
    "width_0.25_epochs_10": _point(0.25, 10),
    "width_0.25_epochs_20": _point(0.25, 20),
    "width_0.25_epochs_30": _point(0.25, 30),
    "width_0.375_epochs_10": _point(0.375, 10),
    "width_0.375_epochs_18": _point(0.375, 18),
    "width_0.5_epochs_10": _point(0.5, 10),
    "width_0.5_epochs_13": _point(0.5, 13),
    "width_1_epochs_10": _point(1.0, 10),
}
