"""`python -m alexnet_jax.explain`: pictures of what a trained network learned (filters, saliency, PCA).

A thin entry point, so that the command stays as documented; the code is alexnet_jax/analysis/explain.py.
"""

from absl import app

from alexnet_jax.analysis import explain

if __name__ == "__main__":
  explain.define_flags()
  app.run(explain.main)
