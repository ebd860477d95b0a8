"""The PyTorch reference for throughput: the `mnist` AlexNet of alexnet_jax/model/alexnet.py, layer for layer
(the same convolutions, SAME padding, batch norm where the config has it, overlapping pooling, dropout,
classifier widths), trained on the same batch size with the same optimizer family and label smoothing.
Needs the `bench` extra."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import torch
from torch import nn

from alexnet_jax.model import alexnet


def torch_version() -> str:
  return torch.__version__


def build(model_config: ml_collections.ConfigDict) -> nn.Module:
  """conv/ReLU/pool stack and dropout-dense classifier matching alexnet.AlexNet(variant="mnist")."""
  flax_model = alexnet.create_model(model_config)
  if flax_model.variant != "mnist" or flax_model.normalization == "lrn":
    raise ValueError("the PyTorch reference covers the mnist variant, without LRN")
  batch_norm = flax_model.normalization == "batchnorm"
  activation = nn.ReLU if flax_model.activation == "relu" else nn.Tanh
  pool = (3, 2) if flax_model.pooling == "overlapping" else (2, 2)
  layers, channels, side = [], 1, alexnet.INPUT_SHAPE[0]
  for spec in flax_model.conv_specs():
    layers.append(nn.Conv2d(channels, spec.features, spec.kernel, padding="same", bias=not batch_norm))
    if batch_norm:  # Flax's momentum 0.9 keeps 0.9 of the old running statistics; PyTorch's 0.1 is the new
      layers.append(nn.BatchNorm2d(spec.features, eps=1e-5, momentum=0.1))
    layers.append(activation())
    channels = spec.features
    if spec.pool_after:
      layers.append(nn.MaxPool2d(*pool))
      side = (side - pool[0]) // pool[1] + 1
  width = flax_model.dense_width or alexnet.MNIST_DENSE_WIDTH
  rate = flax_model.dropout_rate
  layers += [nn.Flatten(), nn.Dropout(rate), nn.Linear(side * side * channels, width), activation(),
             nn.Dropout(rate), nn.Linear(width, width), activation(),
             nn.Linear(width, flax_model.num_classes)]
  return nn.Sequential(*layers)


def _optimizer(config: ml_collections.ConfigDict, params) -> torch.optim.Optimizer:
  if config.optimizer == "sgd":
    return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)
  return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def default_device() -> str:
  """The CUDA GPU where PyTorch sees one (as JAX would use it), else the CPU."""
  return "cuda" if torch.cuda.is_available() else "cpu"


def step_runners(config: ml_collections.ConfigDict, memory_format: str, dtype: str, device: str = "cpu"
                 ) -> tuple[Callable[[int], None], Callable[[int], None]]:
  """(run_train(n), run_eval(n)): n training / evaluation steps on fixed random batches; each call
  returns once its steps have finished on the device.

  bfloat16 is autocast (float32 weights, bfloat16 compute), PyTorch's own mixed-precision mode. On a GPU,
  cuDNN picks its fastest algorithms (`cudnn.benchmark`) and uses its defaults (TF32 for convolutions).
  """
  torch.manual_seed(0)
  torch.backends.cudnn.benchmark = True
  fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
  model = build(config.model).to(device=device, memory_format=fmt)
  optimizer = _optimizer(config, model.parameters())
  loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

  def images(size: int) -> torch.Tensor:
    return torch.randn(size, 1, *alexnet.INPUT_SHAPE[:2], device=device).contiguous(memory_format=fmt)

  train_images, eval_images = images(config.batch_size), images(config.eval_batch_size)
  labels = torch.randint(0, 10, (config.batch_size,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def finish() -> None:
    if device == "cuda":
      torch.cuda.synchronize()

  def run_train(n: int) -> None:
    model.train()
    for _ in range(n):
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = loss_fn(model(train_images), labels)
      loss.backward()
      optimizer.step()
    finish()

  def run_eval(n: int) -> None:
    model.eval()
    with torch.inference_mode(), autocast:
      for _ in range(n):
        model(eval_images).argmax(-1)
    finish()

  return run_train, run_eval
