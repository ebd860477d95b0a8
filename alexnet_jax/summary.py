"""`python -m alexnet_jax.summary`: the network's layer table (shapes, parameters, FLOPs).

A thin entry point, so that the command stays as documented; the code is alexnet_jax/model/summary.py.
"""

from absl import app

from alexnet_jax.model import summary

if __name__ == "__main__":
  summary.define_flags()
  app.run(summary.main)
