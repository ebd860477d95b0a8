"""`python -m alexnet_jax.evaluate`: evaluation reports of a trained run, or of the ensemble of several.

A thin entry point, so that the command stays as documented; the code is alexnet_jax/analysis/evaluate.py.
"""

from absl import app

from alexnet_jax.analysis import evaluate

if __name__ == "__main__":
  evaluate.define_flags()
  app.run(evaluate.main)
