"""`python -m alexnet_jax.export`: a trained run as ONNX or StableHLO.

A thin entry point, so that the command stays as documented; the code is alexnet_jax/inference/export.py.
"""

from absl import app

from alexnet_jax.inference import export

if __name__ == "__main__":
  export.define_flags()
  app.run(export.main)
