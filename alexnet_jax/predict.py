"""`python -m alexnet_jax.predict`: the digit in your own images, or (`--number`) the string of digits.

A thin entry point, so that the command stays as documented; the code is alexnet_jax/inference/predict.py.
"""

from absl import app

from alexnet_jax.inference import predict

if __name__ == "__main__":
  predict.define_flags()
  app.run(predict.main)
