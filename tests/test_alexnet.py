"""Shapes, parameter counts and knobs of both AlexNet variants."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from alexnet_jax.model import alexnet
from alexnet_jax.training import run_config
from configs import default


def _init(model, batch=2, size=28):
  x = jnp.zeros((batch, size, size, 1))
  return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _expected_params(convs, in_channels, flat_features, dense, classes=10):
  """An independent count from the layer table: weights plus biases of every layer."""
  total, channels = 0, in_channels
  for features, kernel in convs:
    total += kernel * kernel * channels * features + features
    channels = features
  total += flat_features * dense + dense + dense * dense + dense + dense * classes + classes
  return total


def test_mnist_variant_shapes_and_parameter_count():
  model = alexnet.AlexNet()
  variables = _init(model)
  convs = [(64, 5), (192, 5), (384, 3), (256, 3), (256, 3)]
  assert _count(variables["params"]) == _expected_params(convs, 1, 2 * 2 * 256, 1024) == 4_557_514
  logits = model.apply(variables, jnp.zeros((3, 28, 28, 1)), train=False)
  assert logits.shape == (3, 10)


def test_mnist_variant_feature_map_sizes_follow_the_paper():
  """28 -> 13 -> 6 -> 2 with overlapping pooling, 28 -> 14 -> 7 -> 3 with non-overlapping."""
  for pooling, side in (("overlapping", 2), ("non_overlapping", 3)):
    model = alexnet.AlexNet(pooling=pooling)
    params = _init(model)["params"]
    assert params["fc1"]["kernel"].shape == (side * side * 256, 1024)


def test_original_variant_shapes_and_parameter_count():
  model = alexnet.AlexNet(variant="original")
  variables = jax.eval_shape(lambda: _init(model, batch=1))
  convs = [(96, 11), (256, 5), (384, 3), (384, 3), (256, 3)]
  assert _count(variables["params"]) == _expected_params(convs, 1, 6 * 6 * 256, 4096) == 58_299_082
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 28, 28, 1)), train=False), variables)
  assert out.shape == (2, 10)


def test_original_variant_runs_on_cpu():
  model = alexnet.AlexNet(variant="original", normalization="lrn")
  variables = _init(model, batch=1)
  logits = model.apply(variables, jnp.ones((1, 28, 28, 1)), train=False)
  assert logits.shape == (1, 10) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("normalization", ["none", "lrn", "batchnorm"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_knobs_build_and_run(normalization, activation):
  model = alexnet.AlexNet(normalization=normalization, activation=activation, width_multiplier=0.25,
                         dense_width=32, dropout_rate=0.3)
  variables = _init(model)
  assert ("batch_stats" in variables) == (normalization == "batchnorm")
  assert ("bn1" in variables["params"]) == (normalization == "batchnorm")
  logits, _ = model.apply(variables, jnp.ones((4, 28, 28, 1)), train=True,
                          rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
  assert logits.shape == (4, 10)


def test_width_multiplier_and_dense_width():
  params = _init(alexnet.AlexNet(width_multiplier=0.5, dense_width=256))["params"]
  assert params["conv1"]["kernel"].shape == (5, 5, 1, 32)
  assert params["conv4"]["kernel"].shape == (3, 3, 192, 128)
  assert params["fc2"]["kernel"].shape == (256, 256)


def test_dropout_is_active_only_in_training():
  model = alexnet.AlexNet(width_multiplier=0.25, dense_width=32)
  variables = _init(model)
  x = jnp.ones((2, 28, 28, 1))
  assert jnp.array_equal(model.apply(variables, x, train=False), model.apply(variables, x, train=False))
  a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
  b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert not jnp.array_equal(a, b)


def test_local_response_norm_matches_the_paper_formula():
  x = jax.random.normal(jax.random.key(0), (1, 2, 2, 7)) * 30
  out = alexnet.LocalResponseNorm().apply({}, x)
  k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
  for i in range(7):
    window = x[..., max(0, i - n // 2):min(7, i + n // 2 + 1)]
    expected = x[..., i] / (k + alpha * jnp.sum(window ** 2, axis=-1)) ** beta
    assert jnp.allclose(out[..., i], expected, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  config = default.get_config().model
  config.dtype = "bfloat16"
  model = alexnet.create_model(config)
  images = jax.random.normal(jax.random.key(1), (4, *alexnet.INPUT_SHAPE))
  variables = model.init(jax.random.key(0), images, train=False)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  logits = model.apply(variables, images, train=False)
  float32 = default.get_config().model
  float32.dtype = "float32"
  reference = alexnet.create_model(float32).apply(variables, images, train=False)
  assert logits.dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa: close to float32, not equal.
  assert 0 < float(jnp.max(jnp.abs(logits - reference))) < 0.05 * float(jnp.max(jnp.abs(reference)))


def test_auto_dtype_is_bfloat16_only_on_onednn_with_native_bfloat16(monkeypatch):
  from alexnet_jax.model import cpu_kernels  # noqa: PLC0415

  for native in (True, False):
    monkeypatch.setattr(cpu_kernels, "native_bfloat16", lambda native=native: native)
    expected = jnp.bfloat16 if native else jnp.float32
    assert alexnet.resolve_dtype("auto", "onednn") == expected
    assert alexnet.resolve_dtype("auto", "xla") == jnp.float32  # XLA's CPU bfloat16 buys nothing
    assert alexnet.resolve_dtype("float32", "onednn") == jnp.float32
    assert alexnet.resolve_dtype("bfloat16", "xla") == jnp.bfloat16


def test_bfloat16_on_the_onednn_path_keeps_float32_activations():
  """bfloat16 products inside the convolutions; everything XLA runs stays float32 (see _layer_dtype)."""
  x = jnp.ones((2, 28, 28, 1))
  model = alexnet.AlexNet(dtype=jnp.bfloat16, conv_impl="onednn")
  variables = model.init(jax.random.key(0), x, train=False)
  _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state["intermediates"]))
  xla_model = alexnet.AlexNet(dtype=jnp.bfloat16)
  xla_state = xla_model.apply(variables, x, train=False, mutable=["intermediates"])[1]
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(xla_state["intermediates"]))


def _folded_and_flax(x, train, **kwargs):
  """(output, updated statistics) of FoldedBatchNorm and of Flax's BatchNorm on the same variables."""
  flax_bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, **kwargs)
  variables = flax_bn.init(jax.random.key(0), x)
  # Non-trivial parameters and running statistics, shared by both.
  keys = jax.random.split(jax.random.key(1), 4)
  channels = x.shape[-1]
  variables = {"params": {"scale": 1 + 0.3 * jax.random.normal(keys[0], (channels,)),
                          "bias": jax.random.normal(keys[1], (channels,))},
               "batch_stats": {"mean": jax.random.normal(keys[2], (channels,)),
                               "var": jnp.exp(jax.random.normal(keys[3], (channels,)))}}
  folded = alexnet.FoldedBatchNorm(use_running_average=not train, momentum=0.9, **kwargs)
  results = []
  for module in (folded, flax_bn):
    y, updates = module.apply(variables, x, mutable=["batch_stats"])
    results.append((y, updates["batch_stats"], variables))
  return results


def _rounding_bound(x, variables, stats):
  """Both forms round each of their <= 4 operations once, on terms no larger than |x a| + |mean a| + |bias|:
  |difference| <= 8 float32 epsilons of that sum, elementwise."""
  mean, var = stats["mean"], stats["var"]
  a = variables["params"]["scale"] * jax.lax.rsqrt(var + 1e-5)
  scale_of_terms = jnp.abs(x * a) + jnp.abs(mean * a) + jnp.abs(variables["params"]["bias"])
  return 8 * jnp.finfo(jnp.float32).eps * scale_of_terms


@pytest.mark.parametrize("train", [True, False])
def test_folded_batch_norm_is_flax_batch_norm_up_to_rounding(train):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(2), (16, 5, 5, 8))
  (y_folded, stats_folded, variables), (y_flax, stats_flax, _) = _folded_and_flax(x, train)
  # The statistics are computed exactly as Flax computes them: the same bits.
  for name in ("mean", "var"):
    assert jnp.array_equal(stats_folded[name], stats_flax[name]), name
  if train:
    stats = {"mean": x.mean((0, 1, 2)), "var": jnp.maximum(0.0, (x * x).mean((0, 1, 2)) -
                                                            x.mean((0, 1, 2)) ** 2)}
    assert not jnp.array_equal(stats_flax["mean"], variables["batch_stats"]["mean"])  # updated
  else:
    stats = variables["batch_stats"]
  difference = jnp.abs(y_folded - y_flax)
  assert jnp.all(difference <= _rounding_bound(x, variables, stats))


def test_folded_batch_norm_has_flax_batch_norms_variables_and_gradients():
  x = jax.random.normal(jax.random.key(3), (8, 4, 4, 6))
  folded = alexnet.FoldedBatchNorm(momentum=0.9)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
  shapes = [jax.tree.map(jnp.shape, m.init(jax.random.key(0), x)) for m in (folded, flax_bn)]
  assert shapes[0] == shapes[1]
  variables = flax_bn.init(jax.random.key(0), x)

  def loss(module, params, x):
    y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  grads = [jax.grad(functools.partial(loss, m), argnums=(0, 1))(variables["params"], x)
           for m in (folded, flax_bn)]
  # Gradients of a normalised sum of sines: entries of order 1, computed by two orderings of float32
  # arithmetic over 96 elements per channel: agreement to 1e-4 absolute.
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
    assert jnp.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_the_model_takes_the_folded_batch_norm_by_config():
  config = default.get_config()
  config.model.conv_impl = "xla"
  config.model.batch_norm_impl = "folded"
  model = alexnet.create_model(config.model)
  assert model.batch_norm_impl == "folded"
  variables = _init(model)
  flax_model = alexnet.create_model(default.get_config().model)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, _init(flax_model))
  saved = config.to_dict()
  del saved["model"]["batch_norm_impl"]  # an older run's config.json, completed as loading one does
  assert alexnet.create_model(run_config.upgrade(saved).model).batch_norm_impl == "flax"


def test_folded_batch_norm_averages_statistics_over_the_device_axis_as_flax_does():
  """Under pmap the statistics are averaged over devices; vmap runs the same collective over its axis."""
  shards = 1.0 + jax.random.normal(jax.random.key(4), (2, 4, 3, 3, 5))
  variables = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), shards[0])
  outputs = []
  for module in (alexnet.FoldedBatchNorm(momentum=0.9, axis_name="devices"),
                 nn.BatchNorm(use_running_average=False, momentum=0.9, axis_name="devices")):
    apply = jax.vmap(lambda x, m=module: m.apply(variables, x, mutable=["batch_stats"]), axis_name="devices")
    outputs.append(apply(shards))
  (y_folded, stats_folded), (y_flax, stats_flax) = outputs
  whole = nn.BatchNorm(use_running_average=False, momentum=0.9)
  _, stats_whole = whole.apply(variables, shards.reshape(8, 3, 3, 5), mutable=["batch_stats"])
  for name in ("mean", "var"):
    assert jnp.array_equal(stats_folded["batch_stats"][name], stats_flax["batch_stats"][name])
    # Both shards hold the statistics of the whole batch (to rounding of the two-level mean).
    assert jnp.allclose(stats_folded["batch_stats"][name][0], stats_whole["batch_stats"][name], atol=1e-6)
  assert jnp.allclose(y_folded, y_flax, atol=1e-5)
