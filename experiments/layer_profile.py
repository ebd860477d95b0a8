"""Where a training step's time goes, per convolution: forward, weight gradient and input gradient, in
milliseconds and GFLOP/s, for XLA (the project's path) and, where installed, PyTorch (channels_last):

  python -m experiments.layer_profile --config configs/default.py [--batch 128] [--notorch]

Each product is jitted (XLA) or run (PyTorch) on its own at the layer's real shapes, best of `repeats`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from alexnet_jax import models, summary
from experiments import throughput

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", "configs/default.py", "A run config.")
  flags.DEFINE_integer("batch", 128, "Batch size.")
  flags.DEFINE_integer("repeats", 5, "Timed calls per product; the best is kept.")
  flags.DEFINE_bool("torch", True, "Also time PyTorch's convolutions (the `bench` extra).")


def _best_ms(call, repeats: int) -> float:
  call()  # compile / warm up
  return 1e3 * throughput.best_seconds(call, repeats)


def conv_shapes(model: models.AlexNet) -> list[tuple[str, int, int, int, int]]:
  """(name, input side, input channels, output channels, kernel) per convolution."""
  rows, side, channels = [], models.INPUT_SHAPE[0], 1
  table = {r.name: r for r in summary.layer_table(model)}
  for i, spec in enumerate(model.conv_specs(), start=1):
    rows.append((f"conv{i}", side, channels, spec.features, spec.kernel))
    channels = spec.features
    side = table[f"pool{i}"].output_shape[0] if spec.pool_after else table[f"conv{i}"].output_shape[0]
  return rows


def xla_times(shape: tuple[int, int, int, int, int], repeats: int) -> dict[str, float]:
  """shape: (batch, input side, input channels, output channels, kernel)."""
  batch, side, cin, cout, kernel = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, side, side, cin), np.float32))
  w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout), np.float32))

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  dy = jnp.ones_like(conv(x, w))
  forward = jax.jit(conv)
  # Each takes one cotangent of the VJP; XLA drops the unused forward and the other gradient.
  weight_grad = jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[1])
  input_grad = jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[0])
  return {"forward": _best_ms(lambda: forward(x, w).block_until_ready(), repeats),
          "weight_grad": _best_ms(lambda: weight_grad(x, w, dy).block_until_ready(), repeats),
          "input_grad": _best_ms(lambda: input_grad(x, w, dy).block_until_ready(), repeats)}


def torch_times(shape: tuple[int, int, int, int, int], repeats: int) -> dict[str, float]:
  batch, side, cin, cout, kernel = shape
  import torch  # noqa: PLC0415 - optional

  fmt = torch.channels_last
  x = torch.randn(batch, cin, side, side).contiguous(memory_format=fmt).requires_grad_(True)
  conv = torch.nn.Conv2d(cin, cout, kernel, padding="same").to(memory_format=fmt)
  y = conv(x)
  dy = torch.ones_like(y)

  def forward():
    with torch.no_grad():
      conv(x)

  def weight_grad():
    torch.autograd.grad(conv(x), conv.weight, dy)

  def input_grad():
    torch.autograd.grad(conv(x), x, dy)

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
  for name, side, cin, cout, kernel in conv_shapes(model):
    flops = FLAGS.batch * table[name].flops_unpadded  # each product costs about one forward
    shape = (FLAGS.batch, side, cin, cout, kernel)
    xla = xla_times(shape, FLAGS.repeats)
    ref = torch_times(shape, FLAGS.repeats) if FLAGS.torch else None
    for product in ("forward", "weight_grad", "input_grad"):
      line = f"| {name} | {product} | {xla[product]:.1f} | {flops / xla[product] / 1e6:.0f} |"
      if ref:
        line += f" {ref[product]:.1f} | {flops / max(ref[product], 1e-3) / 1e6:.0f} |"
      print(line, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
