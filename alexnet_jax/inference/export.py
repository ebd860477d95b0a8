"""Export a trained network out of Python and JAX:
`python -m alexnet_jax.export --workdir DIR [--checkpoint best|latest|STEP] --format onnx|stablehlo --out F`.

Both formats take float32 images of shape (N, 28, 28, 1) with pixel values in [0, 255], in MNIST's own
form (light ink on black, centred: what `digit_image.preprocess` produces), with a symbolic batch size N, and
return softmax probabilities (N, 10). The normalisation is inside the graph; the weights are constants;
the run's calibration temperature (inference/calibration.py) divides the logits before the softmax.

* `stablehlo`: `jax.export` serialized (`jax.export.deserialize(bytes).call(images)` runs it in any JAX,
  without this project's code).
* `onnx`: a graph built with the `onnx` package from the parameters, opset `ONNX_OPSET`. jax2onnx would
  convert the Flax model directly, but its published requirements pin orbax-checkpoint below the version
  this project needs, so the graph is written here: every layer is a standard operator (Conv,
  BatchNormalization, Relu or Tanh, LRN, MaxPool, Resize, Gemm, Softmax), mapped one to one, and tests
  compare the graph with JAX on every knob of the model and on all 10,000 test images.

Computation is float32 in both, whatever `model.dtype` the run trained with.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import trained_run
from alexnet_jax.model import alexnet
from alexnet_jax.training import checkpointing

FORMATS = ("onnx", "stablehlo")
ONNX_OPSET = 17
FLAGS = flags.FLAGS


class ExportError(ValueError):
  """The export cannot be written (format, destination)."""


def float32_model(model: alexnet.AlexNet) -> alexnet.AlexNet:
  # XLA's convolutions: an exported program must run wherever it is loaded, without our CPU extension.
  return dataclasses.replace(model, dtype=jnp.float32, batch_norm_axis_name=None, conv_impl="xla",
                             data_mesh=None)


def probabilities_fn(model: alexnet.AlexNet, variables: dict[str, Any], temperature: float = 1.0):
  """float32 images (N, 28, 28, 1) in [0, 255] -> softmax(logits / temperature) (N, classes), weights as
  constants."""
  model = float32_model(model)

  def probabilities(images: jax.Array) -> jax.Array:
    logits = model.apply(variables, input_pipeline.normalize(images), train=False)
    return jax.nn.softmax(logits / jnp.float32(temperature))

  return probabilities


# --- StableHLO ----------------------------------------------------------------------------------------


def to_stablehlo(model: alexnet.AlexNet, variables: dict[str, Any], temperature: float = 1.0) -> bytes:
  """`jax.export` of the network with a symbolic batch dimension, serialized."""
  (batch,) = jax.export.symbolic_shape("batch")
  images = jax.ShapeDtypeStruct((batch, *alexnet.INPUT_SHAPE), jnp.float32)
  exported = jax.export.export(jax.jit(probabilities_fn(model, variables, temperature)))(images)
  return bytes(exported.serialize())


# --- ONNX ---------------------------------------------------------------------------------------------


class _Graph:
  """Accumulates ONNX nodes and constant tensors with unique names."""

  def __init__(self):
    import onnx  # noqa: PLC0415 - an optional dependency, needed only to export ONNX.

    self.onnx = onnx
    self.nodes: list[Any] = []
    self.initializers: list[Any] = []
    self._count = 0

  def name(self, hint: str) -> str:
    self._count += 1
    return f"{hint}_{self._count}"

  def constant(self, hint: str, value: np.ndarray) -> str:
    name = self.name(hint)
    self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
    return name

  def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attributes) -> str:
    output = self.name(hint or op_type.lower())
    self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], **attributes))
    return output


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """XLA's SAME padding (lower, upper) of one spatial dimension, as Flax's nn.Conv uses it."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _conv(graph: _Graph, x: str, params: dict, spec: alexnet.ConvSpec, size: int) -> tuple[str, int]:
  kernel = np.transpose(np.asarray(params["kernel"], np.float32), (3, 2, 0, 1))  # HWIO -> OIHW
  if spec.padding == "SAME":
    low, high = _same_padding(size, spec.kernel, spec.stride)
  else:
    low = high = 0
  inputs = [x, graph.constant("kernel", kernel)]
  if "bias" in params:
    inputs.append(graph.constant("bias", np.asarray(params["bias"], np.float32)))
  out = graph.op("Conv", inputs, kernel_shape=[spec.kernel] * 2, strides=[spec.stride] * 2,
                 pads=[low, low, high, high])
  return out, (size + low + high - spec.kernel) // spec.stride + 1


def to_onnx(model: alexnet.AlexNet, variables: dict[str, Any], temperature: float = 1.0) -> bytes:
  """The network as a serialized ONNX model (NHWC float images in [0, 255] -> probabilities)."""
  graph = _Graph()
  onnx = graph.onnx
  params, stats = variables["params"], variables.get("batch_stats", {})
  # Normalise as input_pipeline.normalize does, then NHWC -> NCHW (ONNX's layout).
  x = graph.op("Div", ["images", graph.constant("c255", np.float32(255.0))])
  x = graph.op("Sub", [x, graph.constant("mean", np.float32(input_pipeline.PIXEL_MEAN))])
  x = graph.op("Div", [x, graph.constant("std", np.float32(input_pipeline.PIXEL_STD))])
  x = graph.op("Transpose", [x], perm=[0, 3, 1, 2])
  size = alexnet.INPUT_SHAPE[0]
  if model.variant == "original":  # jax.image.resize's bilinear upsampling: half-pixel centres.
    size = alexnet.ORIGINAL_INPUT_SIZE
    batch_and_channels = graph.op("Slice", [graph.op("Shape", [x]),
                                            graph.constant("start", np.array([0], np.int64)),
                                            graph.constant("end", np.array([2], np.int64))])
    sizes = graph.op("Concat", [batch_and_channels, graph.constant("hw", np.array([size, size], np.int64))],
                     axis=0)
    x = graph.op("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
  activation = "Relu" if model.activation == "relu" else "Tanh"
  for i, spec in enumerate(model.conv_specs(), start=1):
    x, size = _conv(graph, x, params[f"conv{i}"], spec, size)
    if model.normalization == "batchnorm":
      bn, running = params[f"bn{i}"], stats[f"bn{i}"]
      x = graph.op("BatchNormalization", [x, *(graph.constant(n, np.asarray(v, np.float32)) for n, v in (
          ("scale", bn["scale"]), ("offset", bn["bias"]), ("mean", running["mean"]),
          ("var", running["var"])))], epsilon=1e-5)  # Flax's default epsilon
    x = graph.op(activation, [x])
    if model.normalization == "lrn" and spec.lrn_after:
      lrn = alexnet.LocalResponseNorm()
      # ONNX divides alpha by the window size; the paper's (and our) formula does not.
      x = graph.op("LRN", [x], size=lrn.depth, alpha=lrn.alpha * lrn.depth, beta=lrn.beta, bias=lrn.bias)
    if spec.pool_after:
      window = 3 if model.pooling == "overlapping" else 2
      x = graph.op("MaxPool", [x], kernel_shape=[window] * 2, strides=[2, 2])
      size = (size - window) // 2 + 1
  # Flatten in Flax's NHWC order.
  x = graph.op("Transpose", [x], perm=[0, 2, 3, 1])
  x = graph.op("Flatten", [x], axis=1)
  for i in (1, 2, 3):
    dense = params[f"fc{i}"]
    x = graph.op("Gemm", [x, graph.constant("w", np.asarray(dense["kernel"], np.float32)),
                          graph.constant("b", np.asarray(dense["bias"], np.float32))])
    if i < 3:
      x = graph.op(activation, [x])
  if temperature != 1.0:
    x = graph.op("Div", [x, graph.constant("temperature", np.float32(temperature))])
  graph.nodes.append(onnx.helper.make_node("Softmax", [x], ["probabilities"], axis=-1))
  onnx_graph = onnx.helper.make_graph(
      graph.nodes, "alexnet_jax",
      [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", *alexnet.INPUT_SHAPE])],
      [onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", model.num_classes])],
      graph.initializers)
  onnx_model = onnx.helper.make_model(onnx_graph, opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET)],
                                      producer_name="alexnet_jax")
  onnx.checker.check_model(onnx_model)
  return onnx_model.SerializeToString()


# --- Command line -------------------------------------------------------------------------------------


def export_run(workdir: str, which: str, export_format: str, out: str, weights: str = "auto") -> str:
  """Writes the run's network in `export_format` to `out`; returns the path written."""
  if export_format not in FORMATS:
    raise ExportError(f"--format={export_format!r}: expected one of {', '.join(FORMATS)}")
  if export_format == "onnx":
    try:
      import onnx  # noqa: F401, PLC0415 - an optional dependency: say so before any work is done
    except ImportError:
      raise ExportError("--format=onnx needs the `export` extra: pip install -e '.[export]'") from None
  directory = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
    raise ExportError(f"{out}: cannot write there ({directory} is not a writable folder)")
  run = trained_run.load(workdir, which, weights)
  data = (to_onnx if export_format == "onnx" else to_stablehlo)(run.model, run.variables,
                                                                 run.temperature or 1.0)
  # Written beside the target and renamed, so that a failed export never leaves half a file.
  with open(out + ".tmp", "wb") as f:
    f.write(data)
  os.replace(out + ".tmp", out)
  return out


def define_flags() -> None:
  cli.define_trained_run()
  flags.DEFINE_string("format", None, f"{' | '.join(FORMATS)}")
  flags.DEFINE_string("out", None, "The file to write.")
  flags.mark_flags_as_required(["format", "out"])


def main(argv: list[str]) -> None:
  cli.quiet_libraries()
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  try:
    path = export_run(FLAGS.workdir, FLAGS.checkpoint, FLAGS.format, FLAGS.out, FLAGS.weights)
  except (ExportError, checkpointing.CheckpointError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {path} ({os.path.getsize(path):,} bytes, {FLAGS.format})", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
