"""The oneDNN convolution and the fused max-pool backward against XLA, their reference.

Tolerances come from the arithmetic, not from one machine. float32: both sides compute the same sums of
products in different orders, so they differ by rounding that grows like a random walk, sqrt(K) unit
roundoffs (u = 2**-24) for a reduction of K terms; compared normwise (max |difference| / max |reference|)
with a factor 8 of headroom: `_f32_tolerance`. bfloat16: both sides take the same bf16 inputs and
accumulate in float32 (XLA converts to f32, convolves, converts back), so they differ by at most about one
rounding of the bf16 result, 2**-8 = 3.9e-3 relative, plus the f32 term: 1e-2 normwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import subprocess
import sys
import sysconfig

import jax
import jax.numpy as jnp
import jax.test_util
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from alexnet_jax.model import alexnet, cpu_kernels, onednn_build
from alexnet_jax.training import metric_logging, optimizers, steps
from configs import smoke
from experiments import layer_profile
from tests.conftest import REPO_ROOT

DN = ("NHWC", "HWIO", "NHWC")
U32 = 2.0 ** -24


@pytest.fixture(scope="module", autouse=True)
def extension():
  """The extension must build here (x86-64 Linux with g++): CI installs the compiler, so a failure to
  build is a failure, never a skip."""
  return onednn_build.load()


def _normwise(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def _f32_tolerance(terms: int) -> float:
  return 8 * U32 * math.sqrt(terms)


def _conv(impl, stride, padding, compute_dtype=None):
  if impl == "onednn":
    fn = functools.partial(cpu_kernels.conv_general_dilated, compute_dtype=compute_dtype)
  else:
    fn = lax.conv_general_dilated
  return lambda x, w: fn(x, w, (stride, stride), padding, dimension_numbers=DN)


def _to_bf16_and_back(a: jax.Array) -> jax.Array:
  return a.astype(jnp.bfloat16).astype(jnp.float32)


# float32: float32 throughout. bfloat16: bfloat16 operands and results. bf16_compute: float32 operands and
# results, products of bfloat16-rounded operands (what a bfloat16 model runs on the oneDNN path); its
# reference is XLA in float32 on the same rounded operands (and rounded incoming gradient), so that the
# two differ only in the order of float32 sums: the float32 tolerance applies.
MODES = ("float32", "bfloat16", "bf16_compute")


def _compare(batch: int, conv: layer_profile.ConvShape, mode: str) -> None:
  side, cin, cout, kernel = conv.side, conv.in_channels, conv.out_channels, conv.kernel
  rng = np.random.default_rng(batch * 1000 + side)
  dtype = jnp.bfloat16 if mode == "bfloat16" else jnp.float32
  x = jnp.asarray(rng.standard_normal((batch, side, side, cin)), dtype)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)) / math.sqrt(kernel * kernel * cin),
                  dtype)
  onednn = _conv("onednn", conv.stride, conv.padding, jnp.bfloat16 if mode == "bf16_compute" else None)
  reference = _conv("xla", conv.stride, conv.padding)
  y = jax.eval_shape(reference, x, w)
  dy = jnp.asarray(np.random.default_rng(7).standard_normal(y.shape), dtype)

  def products(conv, x, w, dy):
    y, vjp = jax.vjp(conv, x, w)
    return (y, *vjp(dy))

  actual = jax.jit(functools.partial(products, onednn))(x, w, dy)
  if mode == "bf16_compute":
    x, w, dy = map(_to_bf16_and_back, (x, w, dy))
  expected = jax.jit(functools.partial(products, reference))(x, w, dy)
  out_side = y.shape[1]
  reductions = {"forward": kernel * kernel * cin, "input_grad": kernel * kernel * cout,
                "weight_grad": batch * out_side * out_side}
  for (name, terms), e, a in zip(reductions.items(), expected, actual, strict=True):
    assert a.shape == e.shape and a.dtype == e.dtype, name
    tolerance = 1e-2 if mode == "bfloat16" else _f32_tolerance(terms)
    assert _normwise(a, e) <= tolerance, (name, _normwise(a, e), tolerance)


def _layer_shapes(slow_variants: tuple[str, ...] = ()):
  for variant in alexnet.VARIANTS:
    marks = [pytest.mark.slow] if variant in slow_variants else []
    for conv in layer_profile.conv_shapes(alexnet.AlexNet(variant=variant)):
      yield pytest.param(conv, id=f"{variant}-{conv.name}", marks=marks)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("conv", list(_layer_shapes(slow_variants=("original",))))  # its 227x227 inputs
def test_every_alexnet_layer_at_batch_1(conv, mode):  # the mnist variant's in the fast tier
  _compare(1, conv, mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("conv", list(_layer_shapes()))
def test_every_alexnet_layer_at_batch_128(conv, mode):
  _compare(128, conv, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stride, padding", [(1, "VALID"), (2, "SAME"), (4, "VALID"), (3, ((1, 2), (0, 1)))])
def test_strides_and_paddings(stride, padding, mode):
  _compare(3, layer_profile.ConvShape("small", 15, 4, 8, 3, stride, padding), mode)


def test_gradients_against_finite_differences():
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  for stride, padding in ((1, "SAME"), (2, "VALID")):
    jax.test_util.check_grads(_conv("onednn", stride, padding), (x, w), order=1, modes=["rev"])


def test_first_layer_skips_the_input_gradient_and_keeps_the_kernel_gradients():
  """Where the input is not differentiated (the images), only the kernel-gradient call is made."""
  x = jax.random.normal(jax.random.key(0), (4, 9, 9, 1))
  w = jax.random.normal(jax.random.key(1), (5, 5, 1, 6))
  conv = _conv("onednn", 1, "SAME")
  kernel_only = jax.jit(jax.grad(lambda w: jnp.sum(conv(x, w) ** 2)))
  hlo = kernel_only.lower(w).as_text()
  assert onednn_build.KERNEL_GRADIENT_TARGET in hlo and onednn_build.BACKWARD_TARGET + '"' not in hlo
  both = jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))(x, w)
  np.testing.assert_array_equal(kernel_only(w), both[1])


def test_under_vmap_and_jit():
  x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 5))
  w = jax.random.normal(jax.random.key(1), (3, 3, 5, 6))
  reference = jax.vmap(_conv("xla", 1, "SAME"), in_axes=(0, None))(x, w)
  mapped = jax.jit(jax.vmap(_conv("onednn", 1, "SAME"), in_axes=(0, None)))(x, w)
  assert _normwise(mapped, reference) <= _f32_tolerance(3 * 3 * 5)
  grads = jax.jit(jax.vmap(jax.grad(lambda x, w: jnp.sum(_conv("onednn", 1, "SAME")(x, w)), argnums=1),
                           in_axes=(0, None)))(x, w)
  expected = jax.vmap(jax.grad(lambda x, w: jnp.sum(_conv("xla", 1, "SAME")(x, w)), argnums=1),
                      in_axes=(0, None))(x, w)
  assert _normwise(grads, expected) <= _f32_tolerance(2 * 8 * 8)


@pytest.mark.parametrize("case", ["dilation", "groups", "nchw", "float16", "negative_padding"])
def test_what_onednn_does_not_cover_is_lax_exactly(case):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 4))
  args = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": DN}
  if case == "dilation":
    args["rhs_dilation"] = (2, 2)
  elif case == "groups":
    w, args["feature_group_count"] = w[:, :, :2], 2
  elif case == "nchw":
    x, args["dimension_numbers"] = x.transpose(0, 3, 1, 2), ("NCHW", "HWIO", "NCHW")
  elif case == "float16":
    x, w = x.astype(jnp.float16), w.astype(jnp.float16)
  else:
    args["padding"] = ((-1, 0), (0, 0))
  hlo = jax.jit(lambda x, w: cpu_kernels.conv_general_dilated(x, w, **args)).lower(x, w).as_text()
  assert "alexnet_onednn" not in hlo
  np.testing.assert_array_equal(cpu_kernels.conv_general_dilated(x, w, **args),
                                lax.conv_general_dilated(x, w, **args))


def test_repeated_calls_give_the_same_bits():
  x = jax.random.normal(jax.random.key(0), (16, 13, 13, 16))
  w = jax.random.normal(jax.random.key(1), (5, 5, 16, 32))
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(_conv("onednn", 1, "SAME")(x, w))), argnums=(0, 1)))
  first, second = grad(x, w), grad(x, w)
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------
# The library's own behaviour: what it builds, how it fails


def _primitives_built(fn, *args) -> dict[str, int]:
  """The primitives `fn(*args)` made the library build, by kind (the kinds with none left out)."""
  before = onednn_build.primitive_counts()
  jax.block_until_ready(fn(*args))
  after = onednn_build.primitive_counts()
  return {kind: after[kind] - before[kind] for kind in after if after[kind] != before[kind]}


@pytest.mark.parametrize("compute_dtype", [None, jnp.bfloat16], ids=["float32", "bf16_compute"])
def test_primitives_are_built_per_kind_on_first_use(compute_dtype):
  """Inference builds forward primitives only; each gradient's primitive is built by its first call, once
  per shape. Shapes no other test in this file uses, so that these calls are the first for them here.
  With bfloat16 products on a small map with 16 channels or more, the kernel gradient is one matrix
  product (where oneDNN has bfloat16: csrc/onednn_conv.cc) and its convolution is never built."""
  channels = 5 if compute_dtype is None else 17
  x = jax.random.normal(jax.random.key(0), (3, 7, 7, channels))
  w = jax.random.normal(jax.random.key(1), (3, 3, channels, 11))
  conv = _conv("onednn", 1, "SAME", compute_dtype)

  def loss(x, w):
    return jnp.sum(conv(x, w) ** 2)

  assert _primitives_built(jax.jit(conv), x, w) == {"forward": 1}
  assert _primitives_built(jax.jit(conv), x, w) == {}
  matmul = compute_dtype is not None and onednn_build.load().has_bf16
  kernel_gradient = "kernel_gradient_matmul" if matmul else "kernel_gradient"
  assert _primitives_built(jax.jit(jax.grad(loss, argnums=1)), x, w) == {kernel_gradient: 1}
  assert _primitives_built(jax.jit(jax.grad(loss, argnums=(0, 1))), x, w) == {"input_gradient": 1}
  assert _primitives_built(jax.jit(jax.grad(loss, argnums=(0, 1))), x, w) == {}


_FAILING_CALLS = """
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
from alexnet_jax.model import cpu_kernels, onednn_build
mesh = jax.make_mesh((2,), ("data",))
calls = {{}}
for devices in (1, 2):
  conv = lambda x, w, m=mesh if devices == 2 else None: cpu_kernels.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers={dn!r}, mesh=m)
  calls[f"{{devices}} forward"] = jax.jit(conv)
  calls[f"{{devices}} backward"] = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w)), argnums=(0, 1)))
  calls[f"{{devices}} kernel gradient"] = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w)), argnums=1))
x = jax.device_put(jnp.ones((2, 5, 5, 2)), NamedSharding(mesh, PartitionSpec("data")))
w = jnp.ones((3, 3, 2, 2))
for failure in ("bad_alloc", "runtime_error", "not_std"):
  onednn_build.set_test_failure(failure)
  for name, call in calls.items():
    try:
      jax.block_until_ready(call(x, w))
      print(f"{{failure}} {{name}}: no error", flush=True)
    except Exception as error:
      print(f"{{failure}} {{name}}: {{type(error).__name__}}: {{error}}", flush=True)
onednn_build.set_test_failure(None)
print("afterwards:", [float(jnp.sum(r)) for call in calls.values() for r in jax.tree.leaves(call(x, w))])
"""


@pytest.mark.slow  # a subprocess: before the handlers caught everything, such a throw could end the process
def test_an_exception_in_the_library_is_a_python_exception_not_an_abort():
  """std::bad_alloc, another std::exception and an object that is none, thrown inside each handler (the
  library's test hook), come out as Python exceptions naming the handler and the cause; the process goes
  on, and the same compiled calls then work. On one device and on two (simulated devices, the batch split
  over a mesh: there XLA runs the handlers on its own threads, where an exception that escaped one ended
  the process)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
  env = dict(os.environ, XLA_FLAGS=flags)
  result = subprocess.run([sys.executable, "-c", _FAILING_CALLS.format(dn=DN)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-3000:])
  lines = result.stdout.splitlines()
  causes = {"bad_alloc": "RESOURCE_EXHAUSTED: onednn conv {}: out of memory (std::bad_alloc)",
            "runtime_error": "INTERNAL: onednn conv {}: test failure (alexnet_onednn_set_test_failure)",
            "not_std": "INTERNAL: onednn conv {}: an exception that is not a std::exception"}
  expected = [f"{failure} {devices} {call}: JaxRuntimeError: {cause.format(call)}"
              for failure, cause in causes.items() for devices in (1, 2)
              for call in ("forward", "backward", "kernel gradient")]
  assert lines[:-1] == expected, result.stdout
  assert lines[-1] == "afterwards: " + str([1352.0] * 8), result.stdout


# ---------------------------------------------------------------------------------------------------
# Max pooling


@pytest.mark.parametrize("window", [(3, 3), (2, 2)])
@pytest.mark.parametrize(("dtype", "size"), [(jnp.float32, (13, 13)), (jnp.bfloat16, (13, 13)),
                                             (jnp.float32, (8, 11))], ids=["f32", "bf16", "f32-8x11"])
def test_max_pool_matches_flax_exactly_with_ties(window, dtype, size):
  """After a ReLU many windows tie at zero: each window's gradient must go to its first maximum, as XLA's
  select_and_scatter does. Small-integer cotangents keep every sum exact, so equality is exact. The forward
  (strided slices, not reduce_window) must give the same values, also where a window does not fit at the
  edge (odd and non-square sizes)."""
  x = nn.relu(jax.random.normal(jax.random.key(0), (4, *size, 8))).astype(dtype)
  x = jnp.round(x * 2) / 2  # more ties among positive values too
  reference = functools.partial(nn.max_pool, window_shape=window, strides=(2, 2), padding="VALID")
  fast = functools.partial(cpu_kernels.max_pool, window=window, strides=(2, 2))
  y, vjp_reference = jax.vjp(reference, x)
  y_fast, vjp_fast = jax.vjp(fast, x)
  np.testing.assert_array_equal(y_fast, y)
  dy = jax.random.randint(jax.random.key(1), y.shape, -3, 4).astype(dtype)
  np.testing.assert_array_equal(jax.jit(vjp_fast)(dy)[0], vjp_reference(dy)[0])


# ---------------------------------------------------------------------------------------------------
# Choosing the implementation


def test_resolution():
  assert cpu_kernels.resolve_conv_impl("xla") == "xla"
  assert cpu_kernels.resolve_conv_impl("auto") == "onednn"
  assert cpu_kernels.resolve_conv_impl("onednn") == "onednn"
  for requested in cpu_kernels.CONV_IMPLS:  # accelerators always convolve through XLA
    assert cpu_kernels.resolve_conv_impl(requested, backend="gpu") == "xla"
  with pytest.raises(ValueError, match="conv_impl"):
    cpu_kernels.resolve_conv_impl("cudnn")


def test_model_with_onednn_has_the_same_parameters_and_function():
  x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  xla_model, onednn_model = alexnet.AlexNet(), alexnet.AlexNet(conv_impl="onednn")
  variables = xla_model.init(jax.random.key(1), x, train=False)
  onednn_variables = onednn_model.init(jax.random.key(1), x, train=False)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, onednn_variables)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(onednn_variables), strict=True):
    np.testing.assert_array_equal(a, b)
  logits = xla_model.apply(variables, x, train=False)
  # Five layers of rounding, each within the f32 bound of its reduction; 1e-5 covers them.
  assert _normwise(onednn_model.apply(variables, x, train=False), logits) <= 1e-5


# ---------------------------------------------------------------------------------------------------
# In training


def test_one_train_step_with_onednn_is_xlas_to_rounding():
  """The smoke network from one state on one batch of synthetic digits, SGD (linear in the gradient, so
  rounding stays rounding: see tests/parallel_worker.py), dropout off. Each weight gradient is a sum of
  up to 32 x 28 x 28 = 25,088 products (f32 bound 8 u sqrt(n) ~ 8e-5 of its scale), moved by lr = 0.02:
  RTOL 1e-5 and an absolute floor of 1e-6, as the data-parallel agreement uses."""
  config = smoke.get_config()
  config.model.dropout_rate, config.optimizer, config.learning_rate = 0.0, "sgd", 0.02
  config.model.dtype = "float32"  # float32's tolerances (see tests/parallel_worker.py)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (32, 28, 28, 1), np.uint8)),
           "label": jnp.asarray(rng.integers(0, 10, (32,), np.int32)), "mask": jnp.ones((32,), jnp.float32)}
  results = {}
  for impl in ("xla", "onednn"):
    config.model.conv_impl = impl
    model = alexnet.create_model(config.model)
    assert model.conv_impl == impl
    state = steps.create_train_state(model, optimizers.create_optimizer(config, 10), jax.random.key(0))
    step = jax.jit(functools.partial(steps.train_step, config=ml_collections.FrozenConfigDict(config)))
    results[impl] = step(state, batch, jax.random.key(1))
  (xla_state, xla_metrics), (onednn_state, onednn_metrics) = results["xla"], results["onednn"]
  np.testing.assert_allclose(onednn_metrics["loss"], xla_metrics["loss"], rtol=1e-5)
  for expected, actual in zip(jax.tree.leaves(xla_state.params), jax.tree.leaves(onednn_state.params),
                              strict=True):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def _smoke_command(workdir, data_dir, *extra) -> list[str]:
  return [sys.executable, "-m", "alexnet_jax.main", "--config", "configs/smoke.py", "--workdir", str(workdir),
          f"--config.data.data_dir={data_dir}", "--config.num_train_steps=4", "--config.eval_every_steps=4",
          "--config.checkpoint_every_steps=4", *extra]


def test_without_a_compiler_auto_trains_with_xla_and_onednn_fails_in_one_line(tmp_path, mnist_data_dir):
  """The extension made unbuildable (no compiler, an empty build cache): `auto` warns once and trains
  with XLA; `onednn` stops before anything runs, with one line naming the field and the reason."""
  env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), ALEXNET_JAX_CACHE=str(tmp_path / "cache"))
  result = subprocess.run(_smoke_command(tmp_path / "auto", mnist_data_dir), cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count("the oneDNN extension is unavailable: no C++ compiler") == 1, result.stderr
  assert "convolutions by xla" in result.stderr
  assert metric_logging.read_metrics(str(tmp_path / "auto"))[-1]["test_count"] == 10000

  command = _smoke_command(tmp_path / "onednn", mnist_data_dir, "--config.model.conv_impl=onednn")
  result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=600)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: config.model.conv_impl='onednn': no C++ compiler: {env['CXX']!r} is not on PATH "
      "(install g++ or set CXX)")
  assert not (tmp_path / "onednn" / "checkpoints").exists()


def _site_packages_without_onednn(farm: pathlib.Path) -> pathlib.Path:
  """This environment's site-packages as links, less the oneDNN wheels' metadata: to Python those wheels
  are not installed, as on every platform but x86-64 Linux (their library files stay where pip put them,
  outside site-packages, found by nobody)."""
  farm.mkdir()
  for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
    if not entry.name.startswith(("onednn_cpu_gomp", "onednn_devel_cpu_gomp")):
      (farm / entry.name).symlink_to(entry)
  return farm


def test_without_the_onednn_wheels_auto_trains_with_xla_and_onednn_fails_in_one_line(tmp_path,
                                                                                     mnist_data_dir):
  """macOS, ARM Linux and Windows install no oneDNN wheels: `auto` warns once and trains with XLA;
  `onednn` stops in one line naming the missing wheel. The process sees the environment without the
  wheels (`-S`: no site initialisation; PYTHONPATH: the links above, then this checkout)."""
  site = _site_packages_without_onednn(tmp_path / "site-packages")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO_ROOT)]),
             ALEXNET_JAX_CACHE=str(tmp_path / "cache"))
  python = [sys.executable, "-S"]
  probe = subprocess.run([*python, "-c", "import importlib.metadata as m; m.version('onednn-cpu-gomp')"],
                         env=env, capture_output=True, text=True, check=False)
  assert "PackageNotFoundError" in probe.stderr, probe.stderr  # the wheel is absent to this process
  command = [*python, *_smoke_command(tmp_path / "auto", mnist_data_dir)[1:]]
  result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count("the oneDNN extension is unavailable: the onednn-cpu-gomp wheel is not "
                             "installed") == 1, result.stderr
  assert "convolutions by xla" in result.stderr
  final = metric_logging.read_metrics(str(tmp_path / "auto"))[-1]
  assert final["test_count"] == 10000 and final["library_versions"]["onednn"] is None

  command = [*python, *_smoke_command(tmp_path / "onednn", mnist_data_dir,
                                      "--config.model.conv_impl=onednn")[1:]]
  result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=600)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.model.conv_impl='onednn': the onednn-cpu-gomp wheel is not installed "
      "(pip install onednn-cpu-gomp==2023.2.0)")
  assert not (tmp_path / "onednn" / "checkpoints").exists()


@pytest.mark.parametrize("mode", ["bfloat16", "bf16_compute"])
def test_bfloat16_where_onednn_has_none(monkeypatch, mode):
  """AVX2-only CPUs: oneDNN has no bfloat16 convolutions there. bfloat16 operands go to lax; bfloat16
  products on float32 operands are had by rounding the operands first (exact products, same arithmetic)."""
  without_bf16 = dataclasses.replace(onednn_build.load(), has_bf16=False)
  monkeypatch.setattr(onednn_build, "load", lambda: without_bf16)
  conv = layer_profile.ConvShape("small", 9, 16, 16, 3, 1, "SAME")
  _compare(2, conv, mode)
  # Which path ran, so that this cannot pass by calling oneDNN's bfloat16 kernels after all.
  dtype = jnp.bfloat16 if mode == "bfloat16" else jnp.float32
  x, w = jnp.ones((2, 9, 9, 16), dtype), jnp.ones((3, 3, 16, 16), dtype)
  onednn = _conv("onednn", 1, "SAME", jnp.bfloat16 if mode == "bf16_compute" else None)
  hlo = jax.jit(onednn).lower(x, w).as_text()
  if mode == "bfloat16":
    assert "alexnet_onednn" not in hlo
  else:
    assert onednn_build.FORWARD_TARGET in hlo and "bf16_compute = false" in hlo
