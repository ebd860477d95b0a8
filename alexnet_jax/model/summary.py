"""The network's layer table: output shape, parameters and FLOPs per image, for README and ablations.

`python -m alexnet_jax.summary --config configs/default.py [--config.model.FIELD=VALUE]` prints it as
markdown. Shapes and parameter counts come from Flax (`jax.eval_shape` of `init`, nothing computed);
FLOPs are counted per layer as 2 x multiply-accumulates (convolutions and dense layers, which are all but
a fraction of a percent of the work) and checked against XLA's own cost analysis in the tests.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import jax
import jax.numpy as jnp
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.model import alexnet


@dataclasses.dataclass(frozen=True)
class LayerRow:
  name: str
  output_shape: tuple[int, ...]
  params: int
  flops: int  # nominal: every kernel tap counted, padding included
  flops_unpadded: int  # taps that fall on padding left out (what XLA's cost analysis counts)


def _side_after(side: int, kernel: int, stride: int, padding: str) -> int:
  if padding == "SAME":
    return math.ceil(side / stride)
  return (side - kernel) // stride + 1


def _taps_inside(side_in: int, side_out: int, kernel: int, stride: int, padding: str) -> int:
  """Sum over output positions of the kernel taps that land inside the input, along one axis."""
  pad_lo = max((side_out - 1) * stride + kernel - side_in, 0) // 2 if padding == "SAME" else 0
  return sum(sum(0 <= o * stride - pad_lo + k < side_in for k in range(kernel))
             for o in range(side_out))


def layer_table(model: alexnet.AlexNet) -> list[LayerRow]:
  """One row per layer, in order, for one 28x28x1 image."""
  variables = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)}, jnp.zeros((1, *alexnet.INPUT_SHAPE)),
      train=False))
  params = variables["params"]

  def count(name: str) -> int:
    layer_params = sum(x.size for x in jax.tree.leaves(params[name]))
    bn = f"bn{name[4:]}" if name.startswith("conv") else None
    return layer_params + (sum(x.size for x in jax.tree.leaves(params[bn])) if bn in params else 0)

  rows = []
  side = alexnet.ORIGINAL_INPUT_SIZE if model.variant == "original" else alexnet.INPUT_SHAPE[0]
  channels = 1
  if model.variant == "original":
    rows.append(LayerRow("resize", (side, side, 1), 0, 0, 0))
  for i, spec in enumerate(model.conv_specs(), start=1):
    side_in, side = side, _side_after(side, spec.kernel, spec.stride, spec.padding)
    name = f"conv{i}"
    flops = 2 * side * side * spec.kernel * spec.kernel * channels * spec.features
    taps = _taps_inside(side_in, side, spec.kernel, spec.stride, spec.padding) ** 2
    unpadded = 2 * taps * channels * spec.features
    channels = spec.features
    rows.append(LayerRow(name, (side, side, channels), count(name), flops, unpadded))
    if spec.pool_after:
      window, stride = (3, 2) if model.pooling == "overlapping" else (2, 2)
      side = _side_after(side, window, stride, "VALID")
      rows.append(LayerRow(f"pool{i}", (side, side, channels), 0, 0, 0))
  features = side * side * channels
  for i in (1, 2, 3):
    name = f"fc{i}"
    out = params[name]["kernel"].shape[1]
    rows.append(LayerRow(name, (out,), count(name), 2 * features * out, 2 * features * out))
    features = out
  return rows


def markdown_table(rows: list[LayerRow]) -> str:
  lines = ["| layer | output shape | parameters | MFLOPs / image | MFLOPs without padding |",
           "|---|---|---:|---:|---:|"]
  for row in rows:
    shape = "x".join(map(str, row.output_shape))
    lines.append(f"| {row.name} | {shape} | {row.params:,} | {row.flops / 1e6:,.1f} | "
                 f"{row.flops_unpadded / 1e6:,.1f} |")
  lines.append(f"| **total** | | **{sum(r.params for r in rows):,}** | "
               f"**{sum(r.flops for r in rows) / 1e6:,.1f}** | "
               f"**{sum(r.flops_unpadded for r in rows) / 1e6:,.1f}** |")
  return "\n".join(lines)


def define_flags() -> None:
  cli.define_config()


def main(argv: list[str]) -> None:
  del argv
  cli.quiet_libraries()
  model = alexnet.create_model(flags.FLAGS.config.model)
  sys.stdout.write(f"AlexNet variant={model.variant!r}\n\n{markdown_table(layer_table(model))}\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
