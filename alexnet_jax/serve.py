"""`python -m alexnet_jax.serve`: a page to draw a digit on, and the JSON prediction API.

A thin entry point, so that the command stays as documented; the code is alexnet_jax/inference/serve.py.
"""

from absl import app

from alexnet_jax.inference import serve

if __name__ == "__main__":
  serve.define_flags()
  app.run(serve.main)
