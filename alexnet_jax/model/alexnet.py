"""AlexNet in Flax Linen, in two topologies.

* ``variant="mnist"``: the AlexNet structure scaled to 28x28x1 inputs. Five convolutions (64, 192, 384,
  256, 256 channels; 5x5, 5x5, 3x3, 3x3, 3x3 kernels; stride 1, SAME), overlapping 3x3/2 max pooling
  after conv1, conv2 and conv5 (28 -> 13 -> 6 -> 2, as the paper's 55 -> 27 -> 13 -> 6), then a
  three-layer classifier with dropout.
* ``variant="original"``: the 2012 paper's network (Krizhevsky, Sutskever and Hinton, "ImageNet
  Classification with Deep Convolutional Neural Networks") on 227x227 inputs, MNIST resized on the fly.

The paper's design choices are constructor fields so that ablations can switch them off one at a time:
activation (ReLU vs tanh), pooling (overlapping vs non-overlapping), normalisation (none, local response
normalisation as in the paper, or batch norm), dropout rate, a width multiplier for every convolution and
the classifier's width.

The module is a pure function of its inputs: ``init`` returns ``{"params", "batch_stats"?}`` and ``apply``
takes them back; dropout randomness comes in through ``rngs={"dropout": key}``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from alexnet_jax.model import cpu_kernels

VARIANTS = ("mnist", "original")
ACTIVATIONS = ("relu", "tanh")
POOLINGS = ("overlapping", "non_overlapping")
NORMALIZATIONS = ("none", "lrn", "batchnorm")
# Batch norm as Flax writes it, or folded into one multiply-add per element (FoldedBatchNorm, below).
BATCH_NORM_IMPLS = ("flax", "folded")
# Compute dtypes; parameters, gradients and optimizer state stay float32 (the "master weights") either way.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# `auto`: bfloat16 where it is both fast and as accurate (oneDNN convolutions on a CPU with native bfloat16:
# docs/results/performance.md has the speed and accuracy measured side by side), float32 everywhere else.
DTYPE_CHOICES = ("auto", *COMPUTE_DTYPES)


def resolve_dtype(name: str, conv_impl: str) -> Any:
  if name == "auto":
    name = "bfloat16" if conv_impl == "onednn" and cpu_kernels.native_bfloat16() else "float32"
  return COMPUTE_DTYPES[name]


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One convolution layer of the feature extractor."""

  features: int
  kernel: int
  stride: int = 1
  padding: str = "SAME"
  pool_after: bool = False
  lrn_after: bool = False  # The paper normalises the responses of conv1 and conv2 only.


# The paper's Table/Figure 2, one row per convolution.
ORIGINAL_CONVS = (
    ConvSpec(96, 11, stride=4, padding="VALID", pool_after=True, lrn_after=True),
    ConvSpec(256, 5, pool_after=True, lrn_after=True),
    ConvSpec(384, 3),
    ConvSpec(384, 3),
    ConvSpec(256, 3, pool_after=True),
)
MNIST_CONVS = (
    ConvSpec(64, 5, pool_after=True, lrn_after=True),
    ConvSpec(192, 5, pool_after=True, lrn_after=True),
    ConvSpec(384, 3),
    ConvSpec(256, 3),
    ConvSpec(256, 3, pool_after=True),
)
# What every variant is fed: MNIST's 28x28x1 (`original` resizes inside the model).
INPUT_SHAPE = (28, 28, 1)
ORIGINAL_INPUT_SIZE = 227
ORIGINAL_DENSE_WIDTH = 4096
MNIST_DENSE_WIDTH = 1024


class FoldedBatchNorm(nn.Module):
  """flax.linen.BatchNorm's function, computed as y = x * a + b with a = scale / sqrt(var + epsilon) and
  b = bias - mean * a per channel.

  Same parameters (scale, bias), same batch statistics (mean, var) with the same running-average update,
  the same fast variance E[x^2] - E[x]^2 clipped at 0, and under pmap the same average over `axis_name`:
  the statistics are Flax's bit for bit, the output equal up to rounding. Flax normalises as
  (x - mean) * a + bias, and XLA's CPU backend writes x - mean out as a pass of its own over the map
  (most of bn1's forward); folded, the normalisation is one pass, and batch norm's share of a training step
  falls by about half (measured: docs/results/performance.md). Written here
  because Flax has no folded form; it adds no arithmetic, only reorders it.
  """

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      statistics_input = x.astype(jnp.float32)  # as Flax: float32 statistics whatever the compute dtype
      mean, mean_square = statistics_input.mean(axes), jnp.square(statistics_input).mean(axes)
      if self.axis_name is not None and not self.is_initializing():
        mean, mean_square = jax.lax.pmean((mean, mean_square), self.axis_name)
      var = jnp.maximum(0.0, mean_square - jnp.square(mean))
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    multiplier = jax.lax.rsqrt(var + self.epsilon) * scale
    y = x * multiplier + (bias - mean * multiplier)
    return y.astype(self.dtype or x.dtype)


class LocalResponseNorm(nn.Module):
  """Cross-channel local response normalisation, section 3.3 of the paper.

  b_i = a_i / (k + alpha * sum_{j in window(i)} a_j^2) ** beta, with the paper's k=2, n=5, alpha=1e-4,
  beta=0.75. Flax has no LRN layer, so it is written here as one windowed sum over the channel axis.
  """

  depth: int = 5
  bias: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    half = self.depth // 2
    squared = jnp.square(x)
    window_sum = jax.lax.reduce_window(
        squared, 0.0, jax.lax.add,
        window_dimensions=(1, 1, 1, self.depth), window_strides=(1, 1, 1, 1),
        padding=((0, 0), (0, 0), (0, 0), (half, half)))
    return x / (self.bias + self.alpha * window_sum) ** self.beta


class AlexNet(nn.Module):
  """AlexNet; see the module docstring. Input: NHWC images, normalised, one channel."""

  variant: str = "mnist"
  num_classes: int = 10
  activation: str = "relu"
  pooling: str = "overlapping"
  normalization: str = "none"
  batch_norm_impl: str = "flax"
  dropout_rate: float = 0.5
  width_multiplier: float = 1.0
  dense_width: int | None = None  # None: the variant's own (1024 for mnist, 4096 for original).
  dtype: Any = jnp.float32
  # Under pmap, the device axis to average batch statistics over (jit needs none: its batch is global).
  batch_norm_axis_name: str | None = None
  # "xla", or "onednn": oneDNN convolutions and a fused max-pool backward (alexnet_jax/model/cpu_kernels.py);
  # same parameters, same function up to rounding. `create_model` resolves the config's "auto".
  conv_impl: str = "xla"
  # Under jit over several devices: the mesh whose first axis splits the batch (the oneDNN custom call
  # runs per shard on it).
  data_mesh: Mesh | None = None

  def conv_specs(self) -> Sequence[ConvSpec]:
    specs = ORIGINAL_CONVS if self.variant == "original" else MNIST_CONVS
    return [dataclasses.replace(s, features=max(1, round(s.features * self.width_multiplier)))
            for s in specs]

  def _activate(self, x: jax.Array) -> jax.Array:
    return nn.relu(x) if self.activation == "relu" else jnp.tanh(x)

  def _pool(self, x: jax.Array) -> jax.Array:
    # The paper's choice is overlapping: z=3, s=2 (section 3.4).
    window = (3, 3) if self.pooling == "overlapping" else (2, 2)
    if self.conv_impl == "onednn":
      return cpu_kernels.max_pool(x, window, (2, 2))
    return nn.max_pool(x, window_shape=window, strides=(2, 2), padding="VALID")

  def _layer_dtype(self) -> Any:
    """What the layers compute in. On the oneDNN path a bfloat16 model multiplies in bfloat16 inside its
    convolutions (nearly all of its arithmetic) and keeps everything else in float32: XLA's CPU backend
    runs bfloat16 elementwise work (ReLU, pooling, their gradients) slower than float32."""
    return jnp.float32 if self.conv_impl == "onednn" else self.dtype

  def _conv_function(self) -> Any:
    if self.conv_impl == "onednn":
      return functools.partial(cpu_kernels.conv_general_dilated, mesh=self.data_mesh,
                               compute_dtype=self.dtype)
    return jax.lax.conv_general_dilated

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown AlexNet variant {self.variant!r}; expected one of {VARIANTS}")
    dtype = self._layer_dtype()
    x = images.astype(dtype)
    if self.variant == "original" and x.shape[1] != ORIGINAL_INPUT_SIZE:
      # The paper's first layer needs 227x227; MNIST is resized on the fly.
      x = jax.image.resize(
          x, (x.shape[0], ORIGINAL_INPUT_SIZE, ORIGINAL_INPUT_SIZE, x.shape[3]), "bilinear")

    for i, spec in enumerate(self.conv_specs(), start=1):
      x = nn.Conv(spec.features, (spec.kernel, spec.kernel), strides=spec.stride,
                  padding=spec.padding, use_bias=self.normalization != "batchnorm",
                  dtype=dtype, conv_general_dilated=self._conv_function(), name=f"conv{i}")(x)
      if self.normalization == "batchnorm":
        batch_norm = FoldedBatchNorm if self.batch_norm_impl == "folded" else nn.BatchNorm
        x = batch_norm(use_running_average=not train, momentum=0.9, dtype=dtype,
                       axis_name=self.batch_norm_axis_name, name=f"bn{i}")(x)
      x = self._activate(x)
      if self.normalization == "lrn" and spec.lrn_after:
        x = LocalResponseNorm(name=f"lrn{i}")(x)
      # Read by alexnet_jax.explain with mutable=["intermediates"]; otherwise sow does nothing at all.
      self.sow("intermediates", f"conv{i}_activation", x)
      if spec.pool_after:
        x = self._pool(x)
        self.sow("intermediates", f"pool{i}", x)

    x = x.reshape((x.shape[0], -1))
    default_width = ORIGINAL_DENSE_WIDTH if self.variant == "original" else MNIST_DENSE_WIDTH
    width = self.dense_width or default_width
    for i in (1, 2):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = self._activate(nn.Dense(width, dtype=dtype, name=f"fc{i}")(x))
    self.sow("intermediates", "features", x)  # the penultimate layer: what the classifier separates
    logits = nn.Dense(self.num_classes, dtype=dtype, name="fc3")(x)
    return logits.astype(jnp.float32)


def create_model(model_config: Any, batch_norm_axis_name: str | None = None,
                 data_mesh: Mesh | None = None) -> AlexNet:
  """Builds the network from ``config.model``, resolving its ``conv_impl`` and ``dtype`` for this machine."""
  conv_impl = cpu_kernels.resolve_conv_impl(model_config.conv_impl)
  return AlexNet(
      variant=model_config.variant,
      num_classes=model_config.num_classes,
      activation=model_config.activation,
      pooling=model_config.pooling,
      normalization=model_config.normalization,
      batch_norm_impl=model_config.batch_norm_impl,
      dropout_rate=model_config.dropout_rate,
      width_multiplier=model_config.width_multiplier,
      dense_width=model_config.dense_width or None,
      dtype=resolve_dtype(model_config.dtype, conv_impl),
      batch_norm_axis_name=batch_norm_axis_name,
      conv_impl=conv_impl,
      data_mesh=data_mesh,
  )
