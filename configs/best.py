"""The longest measured recipe: the default's (batch norm, a moving average of the weights), trained 16 epochs
instead of 10.

Targets (mean test accuracy >= 99.70% over five seeds, each >= 99.65%; the ensemble of the five >= 99.75%):
where it stands is in docs/recipe.md. 16 epochs is the longest run of which two seeds fit one working session
on a 2-core CPU (runs do not outlive a session there; a 30-epoch run was cut off at epoch 18). On the `recipe`
sweep's evidence (docs/recipe.md), epochs moved validation accuracy (2.7 -> 8 epochs: +0.08 points; batch norm
8 -> 10: +0.05), batch norm converged sooner and with 10 epochs won (+0.11 on validation over the 8-epoch
recipe without it), elastic distortion cost 0.56 points at 8 epochs, and the moving average of the weights is
kept (+0.01 at the end, far more mid-run).
Expected time: about 60 minutes on a 2-core CPU with native bfloat16 (AMD EPYC, avx512_bf16: about 225 s
per epoch with its evaluations), about 1.5 hours in float32 (estimated); on an NVIDIA H200, whose 2.7 epochs
took 1.6 s, well under a minute.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.num_epochs = 16.0
  return config
