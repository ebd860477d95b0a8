"""The layer profile times each convolution at the shapes the model really runs, for both variants."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from alexnet_jax.model import alexnet, summary
from experiments import layer_profile


def _model_convs(model: alexnet.AlexNet) -> dict[str, tuple[tuple[int, ...], nn.Conv]]:
  """conv name -> (its input's shape, the Flax layer), recorded in the model's forward pass (shapes only)."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
      seen[context.module.name] = (args[0].shape, context.module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, *alexnet.INPUT_SHAPE)),
                                      train=False))
  return seen


@pytest.mark.parametrize("variant", alexnet.VARIANTS)
def test_conv_shapes_are_the_models_own(variant):
  model = alexnet.AlexNet(variant=variant)
  table = {r.name: r for r in summary.layer_table(model)}
  real = _model_convs(model)
  shapes = layer_profile.conv_shapes(model)
  assert [c.name for c in shapes] == sorted(real)
  for conv in shapes:
    input_shape, layer = real[conv.name]
    assert (conv.side, conv.side, conv.in_channels) == input_shape[1:]
    assert (conv.out_channels, (conv.kernel, conv.kernel)) == (layer.features, layer.kernel_size)
    assert (conv.stride, conv.padding) == (layer.strides, layer.padding)
    # The product timed on XLA yields the layer table's output shape.
    x = jax.ShapeDtypeStruct((2, conv.side, conv.side, conv.in_channels), jnp.float32)
    w = jax.ShapeDtypeStruct((conv.kernel, conv.kernel, conv.in_channels, conv.out_channels), jnp.float32)
    assert jax.eval_shape(layer_profile.xla_conv(conv), x, w).shape == (2, *table[conv.name].output_shape)
    # PyTorch's Conv2d spelling of the same padding.
    assert layer_profile.torch_padding(conv) == layer.padding.lower()


def test_original_conv1_is_the_papers():
  conv1, conv2 = layer_profile.conv_shapes(alexnet.AlexNet(variant="original"))[:2]
  assert (conv1.side, conv1.kernel, conv1.stride, conv1.padding) == (227, 11, 4, "VALID")
  assert layer_profile.torch_padding(conv1) == "valid"
  assert conv2.side == 27  # (227 - 11) // 4 + 1 = 55, pooled 3x3/2 to 27, as in the paper
