"""params_sha256: stable for equal trees, different for any changed bit."""

import jax.numpy as jnp
import numpy as np

from alexnet_jax.training.fingerprint import params_sha256


def test_equal_trees_equal_hashes_regardless_of_insertion_order():
  a = {"conv1": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)}, "fc": {"b": jnp.ones(2)}}
  b = {"fc": {"b": jnp.ones(2)}, "conv1": {"bias": jnp.zeros(3), "kernel": jnp.arange(6.0).reshape(2, 3)}}
  assert params_sha256(a) == params_sha256(b)
  assert len(params_sha256(a)) == 64


def test_one_flipped_bit_changes_the_hash():
  kernel = np.arange(6, dtype=np.float32)
  flipped = kernel.copy()
  flipped.view(np.uint32)[3] ^= 1
  assert params_sha256({"k": jnp.asarray(kernel)}) != params_sha256({"k": jnp.asarray(flipped)})


def test_shape_and_name_are_part_of_the_hash():
  x = jnp.arange(6.0)
  assert params_sha256({"k": x}) != params_sha256({"k": x.reshape(2, 3)})
  assert params_sha256({"k": x}) != params_sha256({"j": x})
