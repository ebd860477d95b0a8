"""Where a training step's time goes, per convolution: forward, weight gradient, input gradient and the
whole backward pass, in milliseconds and GFLOP/s, for XLA, for the oneDNN custom call where its extension
loads (alexnet_jax/model/cpu_kernels.py), and, where installed, PyTorch (channels_last):

  python -m experiments.layer_profile --config configs/default.py [--batch 128] [--dtype bfloat16]

Each product is jitted (JAX) or run (PyTorch) on its own at the layer's real shapes, best of `repeats`.
oneDNN computes both gradients in one call, so its `input_grad` row times that call; its `weight_grad` row
is the kernel gradient alone (what the first layer, whose input is the images, runs).
PyTorch's bfloat16 is autocast, as in experiments/throughput.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.model import alexnet, cpu_kernels, summary
from experiments import throughput

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config()
  flags.DEFINE_integer("batch", 128, "Batch size.")
  flags.DEFINE_integer("repeats", 5, "Timed calls per product; the best is kept.")
  flags.DEFINE_bool("torch", True, "Also time PyTorch's convolutions (the `bench` extra).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


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


def conv_shapes(model: alexnet.AlexNet) -> list[ConvShape]:
  """One per convolution. Each input is the output of the layer before it in the model's own layer table, so
  that `original` (227x227 after its resize, conv1 11x11 stride 4 VALID) is timed at its real shapes."""
  specs = model.conv_specs()
  rows, previous = [], alexnet.INPUT_SHAPE
  for row in summary.layer_table(model):
    if row.name.startswith("conv"):
      spec = specs[int(row.name.removeprefix("conv")) - 1]
      rows.append(ConvShape(row.name, previous[0], previous[2], spec.features, spec.kernel, spec.stride,
                            spec.padding))
    previous = row.output_shape
  return rows


PRODUCTS = ("forward", "weight_grad", "input_grad", "backward")


def xla_conv(conv: ConvShape, impl: str = "xla", dtype: str = "float32"
             ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The convolution alone, NHWC x HWIO, with the model's stride and padding, through `impl`, as the model
  runs it in `dtype` (on the oneDNN path a bfloat16 model feeds float32 and multiplies in bfloat16)."""
  conv_fn = jax.lax.conv_general_dilated
  if impl == "onednn":
    conv_fn = functools.partial(cpu_kernels.conv_general_dilated, compute_dtype=jnp.dtype(dtype))

  def apply(x: jax.Array, w: jax.Array) -> jax.Array:
    return conv_fn(x, w, (conv.stride, conv.stride), conv.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

  return apply


def jax_times(batch: int, conv: ConvShape, repeats: int, impl: str = "xla",
              dtype: str = "float32") -> dict[str, float]:
  rng = np.random.default_rng(0)
  operands = jnp.float32 if impl == "onednn" else dtype
  x = jnp.asarray(rng.standard_normal((batch, conv.side, conv.side, conv.in_channels)), operands)
  w = jnp.asarray(rng.standard_normal((conv.kernel, conv.kernel, conv.in_channels, conv.out_channels)),
                  operands)
  apply = xla_conv(conv, impl, dtype)
  dy = jnp.ones_like(apply(x, w))
  forward = jax.jit(apply)
  # Each takes what it names of the VJP; XLA drops the unused forward (and, for XLA, the other gradient).
  # The weight gradient alone is what the first layer needs, whose input is the images.
  weight_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda w: apply(x, w), w)[1](dy)[0])
  input_grad = jax.jit(lambda x, w, dy: jax.vjp(apply, x, w)[1](dy)[0])
  backward = jax.jit(lambda x, w, dy: jax.vjp(apply, x, w)[1](dy))
  return {"forward": _best_ms(lambda: forward(x, w).block_until_ready(), repeats),
          "weight_grad": _best_ms(lambda: weight_grad(x, w, dy).block_until_ready(), repeats),
          "input_grad": _best_ms(lambda: input_grad(x, w, dy).block_until_ready(), repeats),
          "backward": _best_ms(lambda: jax.block_until_ready(backward(x, w, dy)), repeats)}


def torch_padding(conv: ConvShape) -> str:
  """torch.nn.Conv2d's spelling of the model's padding. PyTorch refuses a strided "same", which no model has:
  its one strided convolution (`original`'s conv1) is VALID."""
  return conv.padding.lower()


def torch_times(batch: int, conv: ConvShape, repeats: int, dtype: str = "float32") -> dict[str, float]:
  import torch  # noqa: PLC0415 - optional

  fmt = torch.channels_last
  x = torch.randn(batch, conv.in_channels, conv.side, conv.side).contiguous(memory_format=fmt)
  x.requires_grad_(True)
  layer = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel, stride=conv.stride,
                          padding=torch_padding(conv)).to(memory_format=fmt)
  autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  with autocast:
    dy = torch.ones_like(layer(x))

  def forward():
    with torch.no_grad(), autocast:
      layer(x)

  def gradient(*wrt):
    def run():
      with autocast:
        y = layer(x)
      torch.autograd.grad(y, wrt, dy)
    return run

  # PyTorch's gradients include their own forward: subtract it to compare products alone.
  f = _best_ms(forward, repeats)
  return {"forward": f, "weight_grad": _best_ms(gradient(layer.weight), repeats) - f,
          "input_grad": _best_ms(gradient(x), repeats) - f,
          "backward": _best_ms(gradient(x, layer.weight), repeats) - f}


def main(argv: list[str]) -> None:
  del argv
  model = alexnet.create_model(FLAGS.config.model)
  table = {r.name: r for r in summary.layer_table(model)}
  impls = throughput.conv_impls_to_measure()
  columns = [f"{name} ms | {name} GFLOP/s" for name in (*impls, *(["PyTorch"] if FLAGS.torch else []))]
  print(f"{FLAGS.dtype}, batch {FLAGS.batch}; `backward` is both gradients (GFLOP/s counts two products)")
  print("| layer | product | " + " | ".join(columns) + " |")
  print("|---|---|" + "---:|---:|" * len(columns))
  for conv in conv_shapes(model):
    flops = FLAGS.batch * table[conv.name].flops_unpadded  # each product costs about one forward
    timings = [jax_times(FLAGS.batch, conv, FLAGS.repeats, impl, FLAGS.dtype) for impl in impls]
    if FLAGS.torch:
      timings.append(torch_times(FLAGS.batch, conv, FLAGS.repeats, FLAGS.dtype))
    for product in PRODUCTS:
      work = flops * (2 if product == "backward" else 1)
      cells = [f"{t[product]:.1f} | {work / max(t[product], 1e-3) / 1e6:.0f}" for t in timings]
      print(f"| {conv.name} | {product} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
