"""Where a training step's time goes, per convolution: forward, weight gradient and input gradient, in
milliseconds and GFLOP/s, for XLA (the project's path) and, where installed, PyTorch (channels_last):

  python -m experiments.layer_profile --config configs/default.py [--batch 128] [--notorch]

Each product is jitted (XLA) or run (PyTorch) on its own at the layer's real shapes, best of `repeats`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from alexnet_jax import cli, models, summary
from experiments import throughput

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config()
  flags.DEFINE_integer("batch", 128, "Batch size.")
  flags.DEFINE_integer("repeats", 5, "Timed calls per product; the best is kept.")
  flags.DEFINE_bool("torch", True, "Also time PyTorch's convolutions (the `bench` extra).")


def _best_ms(call, repeats: int) -> float:
  call()  # compile / warm up
  return 1e3 * throughput.best_seconds(call, repeats)


class ConvShape(NamedTuple):
  """One convolution as the model runs it."""

  name: str
  side: int  # input height = width
  in_channels: int
  out_channels: int
  kernel: int
  stride: int
  padding: str  # SAME | VALID, as Flax and XLA spell it


def conv_shapes(model: models.AlexNet) -> list[ConvShape]:
  """One per convolution. Each input is the output of the layer before it in the model's own layer table, so
  that `original` (227x227 after its resize, conv1 11x11 stride 4 VALID) is timed at its real shapes."""
  specs = model.conv_specs()
  rows, previous = [], models.INPUT_SHAPE
  for row in summary.layer_table(model):
    if row.name.startswith("conv"):
      spec = specs[int(row.name.removeprefix("conv")) - 1]
      rows.append(ConvShape(row.name, previous[0], previous[2], spec.features, spec.kernel, spec.stride,
                            spec.padding))
    previous = row.output_shape
  return rows


def xla_conv(conv: ConvShape) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The convolution alone, NHWC x HWIO, with the model's stride and padding."""

  def apply(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (conv.stride, conv.stride), conv.padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  return apply


def xla_times(batch: int, conv: ConvShape, repeats: int) -> dict[str, float]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, conv.side, conv.side, conv.in_channels), np.float32))
  w = jnp.asarray(rng.standard_normal((conv.kernel, conv.kernel, conv.in_channels, conv.out_channels),
                                      np.float32))
  apply = xla_conv(conv)
  dy = jnp.ones_like(apply(x, w))
  forward = jax.jit(apply)
  # Each takes one cotangent of the VJP; XLA drops the unused forward and the other gradient.
  weight_grad = jax.jit(lambda x, w, dy: jax.vjp(apply, x, w)[1](dy)[1])
  input_grad = jax.jit(lambda x, w, dy: jax.vjp(apply, x, w)[1](dy)[0])
  return {"forward": _best_ms(lambda: forward(x, w).block_until_ready(), repeats),
          "weight_grad": _best_ms(lambda: weight_grad(x, w, dy).block_until_ready(), repeats),
          "input_grad": _best_ms(lambda: input_grad(x, w, dy).block_until_ready(), repeats)}


def torch_padding(conv: ConvShape) -> str:
  """torch.nn.Conv2d's spelling of the model's padding. PyTorch refuses a strided "same", which no model has:
  its one strided convolution (`original`'s conv1) is VALID."""
  return conv.padding.lower()


def torch_times(batch: int, conv: ConvShape, repeats: int) -> dict[str, float]:
  import torch  # noqa: PLC0415 - optional

  fmt = torch.channels_last
  x = torch.randn(batch, conv.in_channels, conv.side, conv.side).contiguous(memory_format=fmt)
  x.requires_grad_(True)
  layer = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel, stride=conv.stride,
                          padding=torch_padding(conv)).to(memory_format=fmt)
  y = layer(x)
  dy = torch.ones_like(y)

  def forward():
    with torch.no_grad():
      layer(x)

  def weight_grad():
    torch.autograd.grad(layer(x), layer.weight, dy)

  def input_grad():
    torch.autograd.grad(layer(x), x, dy)

  # PyTorch's gradients include their own forward: subtract it to compare products alone.
  f = _best_ms(forward, repeats)
  return {"forward": f, "weight_grad": _best_ms(weight_grad, repeats) - f,
          "input_grad": _best_ms(input_grad, repeats) - f}


def main(argv: list[str]) -> None:
  del argv
  model = models.create_model(FLAGS.config.model)
  table = {r.name: r for r in summary.layer_table(model)}
  torch_columns = " PyTorch ms | PyTorch GFLOP/s |" if FLAGS.torch else ""
  print("| layer | product | XLA ms | XLA GFLOP/s |" + torch_columns)
  print("|---|---|---:|---:|" + ("---:|---:|" if FLAGS.torch else ""))
  for conv in conv_shapes(model):
    flops = FLAGS.batch * table[conv.name].flops_unpadded  # each product costs about one forward
    xla = xla_times(FLAGS.batch, conv, FLAGS.repeats)
    ref = torch_times(FLAGS.batch, conv, FLAGS.repeats) if FLAGS.torch else None
    for product in ("forward", "weight_grad", "input_grad"):
      line = f"| {conv.name} | {product} | {xla[product]:.1f} | {flops / xla[product] / 1e6:.0f} |"
      if ref:
        line += f" {ref[product]:.1f} | {flops / max(ref[product], 1e-3) / 1e6:.0f} |"
      print(line, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
