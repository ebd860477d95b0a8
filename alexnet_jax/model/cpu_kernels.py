"""Faster CPU kernels for the model's costliest operations, with XLA as fallback and reference.

On CPUs, XLA's convolutions hold a training step to about half of PyTorch's speed
(docs/results/performance.md), and bfloat16 buys nothing there because XLA's CPU convolutions convert
bf16 to f32. So:

* `conv_general_dilated`: a drop-in for `lax.conv_general_dilated` (what `nn.Conv` takes as its
  `conv_general_dilated` field, so parameters and checkpoints are unchanged) that runs the forward pass,
  and the input and kernel gradients, through oneDNN (`csrc/onednn_conv.cc`) under a `jax.custom_vjp`.
  It handles what the model uses (NHWC/HWIO, float32 or bfloat16, SAME/VALID or explicit padding, any
  stride, no dilation or groups) and hands anything else to `lax.conv_general_dilated`.
* `max_pool`: once the convolutions are fast, max pooling's backward (XLA's `select_and_scatter`) is the
  largest cost left. This one has a backward that is one elementwise select per window offset, which XLA
  fuses into a single loop, and a forward that is the elementwise maximum of the window's strided slices
  (the same values: a maximum rounds nothing), which XLA's CPU backend runs several times faster than
  its `reduce_window` (measured on conv1's map: docs/results/performance.md).

`resolve_conv_impl` turns `config.model.conv_impl` (`auto`, `xla`, `onednn`) into the one that runs.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from alexnet_jax.model import onednn_build

CONV_IMPLS = ("auto", "xla", "onednn")
_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")
_DTYPES = (jnp.float32, jnp.bfloat16)


def resolve_conv_impl(requested: str, backend: str | None = None) -> str:
  """`auto` -> `onednn` on a CPU backend where the extension loads, else `xla` (with one warning line).

  `onednn` raises OnednnUnavailableError (one line saying why) where the extension cannot be had. GPUs
  and TPUs always get `xla`: the extension is a CPU kernel.
  """
  if requested not in CONV_IMPLS:
    raise ValueError(f"unknown conv_impl {requested!r}; expected one of {CONV_IMPLS}")
  if requested == "xla" or (backend or jax.default_backend()) != "cpu":
    return "xla"
  if requested == "onednn":
    onednn_build.load()
    return "onednn"
  return "onednn" if _onednn_loads() else "xla"


@functools.cache
def native_bfloat16() -> bool:
  """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), which oneDNN then uses."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
  except OSError:
    return False
  return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache  # once per process: one warning line, however many models are built
def _onednn_loads() -> bool:
  try:
    onednn_build.load()
  except onednn_build.OnednnUnavailableError as error:
    logging.warning("conv_impl=auto: using XLA's convolutions, the oneDNN extension is unavailable: %s",
                    error)
    return False
  return True


# ---------------------------------------------------------------------------------------------------
# Convolution


class _ConvSetup(NamedTuple):
  """What a oneDNN convolution call needs besides its operands (static under jit)."""

  strides: tuple[int, int]
  padding: tuple[tuple[int, int], ...]
  bf16_compute: bool  # float32 operands, bfloat16 products (see csrc/onednn_conv.cc)
  mesh: Mesh | None  # run per shard of the batch over this mesh's first axis
  # The same bfloat16 products where oneDNN has no bfloat16 convolutions (AVX2-only CPUs): operands
  # rounded to bfloat16 here, then a float32 convolution (a product of two bfloat16 values is exact in
  # float32, so the arithmetic is the same; only the speed is float32's).
  round_to_bf16: bool = False

  def rounded(self, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    if not self.round_to_bf16:
      return arrays
    return tuple(a.astype(jnp.bfloat16).astype(a.dtype) for a in arrays)

  def attributes(self) -> dict[str, Any]:
    return {"strides": np.asarray(self.strides, np.int64),
            "padding": np.asarray([p for pair in self.padding for p in pair], np.int64),
            "bf16_compute": self.bf16_compute}

  def per_shard(self, fn, in_specs: tuple, out_specs: Any):
    """`fn` on each device's shard of the batch: a custom call has no partitioning rule of its own, and
    without one XLA would gather the whole batch onto every device."""
    if self.mesh is None:
      return fn
    return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

  @property
  def batch_spec(self) -> PartitionSpec | None:
    return PartitionSpec(self.mesh.axis_names[0]) if self.mesh is not None else None


def _ffi_forward(x: jax.Array, w: jax.Array, setup: _ConvSetup) -> jax.Array:
  spatial = [(size + lo + hi - k) // s + 1 for size, (lo, hi), k, s
             in zip(x.shape[1:3], setup.padding, w.shape[:2], setup.strides, strict=True)]
  out = jax.ShapeDtypeStruct((x.shape[0], *spatial, w.shape[3]), x.dtype)
  return jax.ffi.ffi_call(onednn_build.FORWARD_TARGET, out, vmap_method="sequential")(
      x, w, **setup.attributes())


def _ffi_backward(x: jax.Array, w: jax.Array, dy: jax.Array, setup: _ConvSetup
                  ) -> tuple[jax.Array, jax.Array]:
  outs = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(w.shape, w.dtype))
  return jax.ffi.ffi_call(onednn_build.BACKWARD_TARGET, outs, vmap_method="sequential")(
      x, w, dy, **setup.attributes())


def _ffi_kernel_gradient(x: jax.Array, w: jax.Array, dy: jax.Array, setup: _ConvSetup) -> jax.Array:
  out = jax.ShapeDtypeStruct(w.shape, w.dtype)
  return jax.ffi.ffi_call(onednn_build.KERNEL_GRADIENT_TARGET, out, vmap_method="sequential")(
      x, dy, **setup.attributes())


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _onednn_conv(x: jax.Array, w: jax.Array, setup: _ConvSetup) -> jax.Array:
  forward = setup.per_shard(functools.partial(_ffi_forward, setup=setup),
                            (setup.batch_spec, PartitionSpec()), setup.batch_spec)
  return forward(*setup.rounded(x, w))


def _onednn_conv_forward(x, w, setup):
  # With symbolic zeros, the primals say whether they are differentiated: the first layer's input (the
  # images) never is, and skipping its input gradient saves most of that layer's backward pass.
  return _onednn_conv(x.value, w.value, setup), (x.value, w.value, x.perturbed)


def _onednn_conv_backward(setup, residuals, dy):
  x, w, input_gradient = residuals
  if isinstance(dy, jax.custom_derivatives.SymbolicZero):
    return None, None
  x, w, dy = setup.rounded(x, w, dy.astype(x.dtype))
  axis = setup.mesh.axis_names[0] if setup.mesh is not None else None

  def summed(dw):  # The kernel gradient is a sum over the batch: add the shards' partial sums.
    return lax.psum(dw, axis) if axis else dw

  def backward(x, w, dy):
    dx, dw = _ffi_backward(x, w, dy, setup)
    return dx, summed(dw)

  def kernel_gradient(x, w, dy):
    return summed(_ffi_kernel_gradient(x, w, dy, setup))

  in_specs = (setup.batch_spec, PartitionSpec(), setup.batch_spec)
  if not input_gradient:
    return None, setup.per_shard(kernel_gradient, in_specs, PartitionSpec())(x, w, dy)
  return setup.per_shard(backward, in_specs, (setup.batch_spec, PartitionSpec()))(x, w, dy)


_onednn_conv.defvjp(_onednn_conv_forward, _onednn_conv_backward, symbolic_zeros=True)


def _explicit_padding(padding: str | Sequence[tuple[int, int]], x_shape: Sequence[int],
                      w_shape: Sequence[int], strides: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
  if isinstance(padding, str):
    return tuple(tuple(p) for p in lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding))
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return pads if all(p >= 0 for pair in pads for p in pair) else None  # oneDNN pads, never crops


def conv_general_dilated(  # noqa: PLR0917 - lax.conv_general_dilated's own signature
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
    precision: Any = None, preferred_element_type: Any = None, *, mesh: Mesh | None = None,
    compute_dtype: Any = None) -> jax.Array:
  """`lax.conv_general_dilated` through oneDNN where it applies (see the module docstring), else lax.

  `mesh`: under `jax.jit` over a Mesh whose first axis splits the batch, run per shard on that axis.
  `compute_dtype=jnp.bfloat16` with float32 operands: multiply in bfloat16 (operands rounded to it),
  accumulate in float32, return float32 (and float32 gradients). Only the oneDNN path does this; where
  this call falls back to lax, it convolves in the operands' own dtype.
  """
  lax_call = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, batch_group_count, precision, preferred_element_type)
  if lhs.ndim != 4 or rhs.ndim != 4:
    return lax_call()
  nhwc_hwio = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC_HWIO)
  supported = (
      lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc_hwio
      and all(d == 1 for d in itertools.chain(lhs_dilation or (), rhs_dilation or ()))
      and feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None
      and lhs.dtype == rhs.dtype and any(lhs.dtype == d for d in _DTYPES))
  pads = _explicit_padding(padding, lhs.shape, rhs.shape, window_strides) if supported else None
  if pads is None:
    return lax_call()
  if mesh is not None and (mesh.size == 1 or lhs.shape[0] % mesh.size):
    mesh = None  # one device, or a batch that is not split (init's one-image dummy): run it whole
  has_bf16 = onednn_build.load().has_bf16
  if lhs.dtype == jnp.bfloat16 and not has_bf16:
    return lax_call()
  bf16_products = compute_dtype is not None and jnp.dtype(compute_dtype) == jnp.bfloat16
  strides = tuple(int(s) for s in window_strides)
  setup = _ConvSetup(strides, pads, bf16_products and has_bf16, mesh, bf16_products and not has_bf16)
  return _onednn_conv(lhs, rhs, setup)


# ---------------------------------------------------------------------------------------------------
# Max pooling


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
  """`nn.max_pool(x, window, strides, padding="VALID")` on NHWC, with a fused elementwise backward."""
  y = None
  for _, _, candidate in _window_offsets(x, window, strides):
    y = candidate if y is None else jnp.maximum(y, candidate)
  return y


def _window_offsets(x, window, strides):
  """(i, j, what offset (i, j) of every window reads: a strided slice of x), in row-major offset order."""
  sh, sw = strides
  oh, ow = ((n - w) // s + 1 for n, w, s in zip(x.shape[1:3], window, strides, strict=True))
  for i, j in itertools.product(range(window[0]), range(window[1])):
    yield i, j, lax.slice(x, (0, i, j, 0), (x.shape[0], i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1,
                                            x.shape[3]), (1, sh, sw, 1))


def _max_pool_forward(x, window, strides):
  y = max_pool(x, window, strides)
  return y, (x, y)


def _max_pool_backward(window, strides, residuals, dy):
  """Each window's gradient goes to its first maximum in row-major order, as `select_and_scatter` does
  (after a ReLU many windows tie at zero, so the order matters)."""
  x, y = residuals
  (sh, sw), (oh, ow) = strides, y.shape[1:3]
  dx = jnp.zeros_like(x)
  taken = jnp.zeros(y.shape, bool)
  for i, j, candidate in _window_offsets(x, window, strides):
    chosen = (candidate == y) & ~taken
    taken = taken | chosen
    # Scatter back onto the input grid: stride-spaced positions starting at offset (i, j).
    dx = dx + lax.pad(jnp.where(chosen, dy, 0).astype(x.dtype), jnp.zeros((), x.dtype),
                      ((0, 0, 0), (i, x.shape[1] - i - sh * (oh - 1) - 1, sh - 1),
                       (j, x.shape[2] - j - sw * (ow - 1) - 1, sw - 1), (0, 0, 0)))
  return (dx,)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)
