"""Throughput measurement of the project's own steps, and the ratio table against PyTorch."""

import pytest

from configs import smoke
from experiments import throughput


@pytest.mark.slow  # times many steps
def test_jax_throughput_of_the_real_steps():
  config = smoke.get_config()
  result = throughput.jax_throughput(config, steps=2, repeats=1)
  assert result["train_images_per_s"] > 0 and result["eval_images_per_s"] > 0
  assert result["train_compile_s"] > 0 and result["host_peak_rss_mib"] > 100


def test_table_ratios_are_against_pytorch_best_float32():
  jax_results = {"float32": {"train_images_per_s": 300.0, "eval_images_per_s": 1000.0}}
  torch_results = {"torch_version": "x", "float32": {
      "nchw": {"train_images_per_s": 100.0, "eval_images_per_s": 500.0},
      "channels_last": {"train_images_per_s": 150.0, "eval_images_per_s": 400.0},
      "best_train_images_per_s": 150.0, "best_eval_images_per_s": 500.0},
      "bfloat16": {"nchw": {"train_images_per_s": 10.0, "eval_images_per_s": 20.0},
                   "channels_last": {"train_images_per_s": 12.0, "eval_images_per_s": 25.0}}}
  table = throughput.markdown_table(jax_results, torch_results)
  assert "| JAX, float32 | 300 | 1,000 | 2.00x | 2.00x |" in table
  assert "| PyTorch x, float32, channels_last | 150 | 400 | 1.00x | 0.80x |" in table
  assert "| PyTorch x, bfloat16, nchw | 10 | 20 | 0.07x | 0.04x |" in table


@pytest.mark.parametrize("normalization", ["none", "batchnorm"])
def test_pytorch_reference_is_the_same_network(normalization):
  torch = pytest.importorskip("torch", reason="the PyTorch reference needs the optional `bench` extra")
  import jax  # noqa: PLC0415

  from alexnet_jax.model import alexnet  # noqa: PLC0415
  from configs import default  # noqa: PLC0415
  from experiments import torch_reference  # noqa: PLC0415

  config = default.get_config()
  config.model.normalization = normalization
  reference = torch_reference.build(config.model)
  flax_model = alexnet.create_model(config.model)
  params = jax.eval_shape(lambda: flax_model.init(
      jax.random.key(0), jax.numpy.zeros((1, *alexnet.INPUT_SHAPE)), train=False))["params"]
  assert sum(p.numel() for p in reference.parameters()) == sum(x.size for x in jax.tree.leaves(params))
  assert reference(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
  batch_norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  assert len(batch_norms) == (len(flax_model.conv_specs()) if normalization == "batchnorm" else 0)
