"""AlexNet for handwritten digits in JAX and Flax: the package's map is README.md's "Project layout"."""

import os

# TensorFlow (which TFDS uses to read MNIST's records) logs INFO lines from C++ as soon as it is imported,
# before any program can filter them: keep them off the terminal unless asked for (a value set wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
