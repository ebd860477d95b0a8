"""Training and evaluation throughput of the project's own steps, beside a PyTorch reference of the same
network, measured in one process on one machine:

  python -m experiments.throughput --config configs/default.py [--notorch] [--config.FIELD=VALUE ...]

JAX: the exact `train.train_step` / `train.eval_step` the training loop runs, compiled the same way
(`parallel.create_strategy`), on device-resident uint8 batches; compile time is the first call's time
less one steady-state step; then `steps` steps are timed `repeats` times after warm-up and the best repeat
is kept (the least disturbed by the rest of the machine; fewer steps where one step is very slow).
PyTorch (optional `bench` extra, `torch==2.13.0`):
the identical architecture, batch and dtype, the same optimizer family and label smoothing, measured at its
best of the default (NCHW) and channels_last memory formats, float32 and bfloat16 autocast. The reference
does no augmentation; the JAX step does whatever the config says (the default augments on device), so the
comparison is, if anything, unfair to JAX.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.model import alexnet, cpu_kernels
from alexnet_jax.training import engine
from experiments import environment

FLAGS = flags.FLAGS
TORCH_DTYPES = ("float32", "bfloat16")


def define_flags() -> None:
  """Only when run as a program, so that benchmark.py can import this module with flags of its own."""
  cli.define_config()
  flags.DEFINE_integer("steps", 20, "Timed steps per repeat.")
  flags.DEFINE_integer("repeats", 3, "Timed repeats; the best is reported.")
  flags.DEFINE_bool("torch", True, "Also measure the PyTorch reference (needs the `bench` extra).")
  flags.DEFINE_list("torch_dtypes", list(TORCH_DTYPES), "PyTorch's dtypes: float32 and bfloat16 "
                    "(autocast, which takes minutes on a CPU without native bfloat16).")
  flags.DEFINE_string("json_out", "", "Also write the results to this JSON file.")


def _best_rate(run_steps, steps: int, repeats: int, images_per_step: int,
               max_repeat_s: float = 30.0) -> float:
  """Images/s of the fastest of `repeats` timings of `steps` steps, after two untimed warm-up steps.

  Where a step is slow (bfloat16 emulated on a CPU without native support can take seconds), fewer steps
  are timed so that one repeat stays under about `max_repeat_s`.
  """
  start = time.perf_counter()
  run_steps(2)
  steps = max(1, min(steps, int(max_repeat_s / ((time.perf_counter() - start) / 2))))
  return steps * images_per_step / best_seconds(lambda: run_steps(steps), repeats)


def best_seconds(call, repeats: int) -> float:
  """The fastest of `repeats` timed calls (warm up first)."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    best = min(best, time.perf_counter() - start)
  return best


def eval_steps(train_steps: int) -> int:
  """Eval batches are ~8x larger than training ones: a quarter as many steps keeps the timings alike."""
  return max(2, train_steps // 4)


def peak_rss_mib() -> float:
  """This process's peak resident memory (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_batch(run: engine.Engine, size: int, rng: np.random.Generator) -> dict[str, jax.Array]:
  """A device-resident batch of random uint8 images and labels, laid out as the run's steps take it."""
  return run.strategy.shard_batch({
      "image": jax.numpy.asarray(rng.integers(0, 256, (size, *alexnet.INPUT_SHAPE), np.uint8)),
      "label": jax.numpy.asarray(rng.integers(0, 10, (size,), np.int32)),
      "mask": jax.numpy.ones((size,), np.float32)})


def jax_throughput(config: ml_collections.ConfigDict, steps: int = 20, repeats: int = 3) -> dict[str, Any]:
  """Train and eval images/s of the project's steps, after compilation, and the compile times.

  The steps are the training loop's own (`engine.Engine`'s compiled functions) on random device-resident
  batches, so that reading data costs nothing here."""
  run = engine.Engine(config)
  state = run.place(run.initial_state())
  rng = np.random.default_rng(0)
  train_batch, eval_batch = (random_batch(run, size, rng) for size in (config.batch_size,
                                                                      config.eval_batch_size))
  step_rng = run.rngs.train
  train_fn, eval_fn = run.train_fn, run.eval_fn

  # The first calls compile (and run one step each); the steady-state step time is subtracted below.
  start = time.perf_counter()
  state, metrics = train_fn(state, train_batch, step_rng)
  jax.block_until_ready(metrics)
  train_first_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(eval_fn(state, eval_batch))
  eval_first_s = time.perf_counter() - start

  def run_train(n: int) -> None:
    nonlocal state
    for _ in range(n):
      state, metrics = train_fn(state, train_batch, step_rng)
    jax.block_until_ready(metrics)

  def run_eval(n: int) -> None:
    outputs = [eval_fn(state, eval_batch) for _ in range(n)]
    jax.block_until_ready(outputs)

  train_rate = _best_rate(run_train, steps, repeats, config.batch_size)
  eval_rate = _best_rate(run_eval, eval_steps(steps), repeats, config.eval_batch_size)
  memory = jax.devices()[0].memory_stats() or {}
  return {"train_images_per_s": train_rate, "eval_images_per_s": eval_rate,
          "train_compile_s": max(0.0, train_first_s - config.batch_size / train_rate),
          "eval_compile_s": max(0.0, eval_first_s - config.eval_batch_size / eval_rate),
          "device_peak_bytes": memory.get("peak_bytes_in_use"), "host_peak_rss_mib": peak_rss_mib()}


def torch_throughput(config: ml_collections.ConfigDict, steps: int = 20, repeats: int = 3,
                     dtypes: tuple[str, ...] = TORCH_DTYPES) -> dict[str, Any]:
  """The PyTorch reference: {"float32": {"nchw": ..., "channels_last": ...}, "bfloat16": {...}}."""
  from experiments import torch_reference  # noqa: PLC0415 - torch is an optional extra

  device = torch_reference.default_device()
  results: dict[str, Any] = {"torch_version": torch_reference.torch_version(), "device": device}
  for dtype in dtypes:
    results[dtype] = {}
    for memory_format in ("nchw", "channels_last"):
      run_train, run_eval = torch_reference.step_runners(config, memory_format, dtype, device)
      results[dtype][memory_format] = {
          "train_images_per_s": _best_rate(run_train, steps, repeats, config.batch_size),
          "eval_images_per_s": _best_rate(run_eval, eval_steps(steps), repeats, config.eval_batch_size)}
    for kind in ("train_images_per_s", "eval_images_per_s"):
      results[dtype][f"best_{kind}"] = max(r[kind] for r in results[dtype].values() if isinstance(r, dict))
  return results


def markdown_table(jax_results: dict[str, dict[str, Any]], torch_results: dict[str, Any] | None) -> str:
  """Rows: each JAX compute dtype, then PyTorch; ratios against PyTorch's best float32."""
  lines = ["| implementation | train images/s | eval images/s | train vs PyTorch best fp32 | "
           "eval vs PyTorch best fp32 |", "|---|---:|---:|---:|---:|"]
  reference = torch_results["float32"] if torch_results else None

  def ratio(value: float, kind: str) -> str:
    return f"{value / reference[f'best_{kind}']:.2f}x" if reference else "n/a"

  for dtype, r in jax_results.items():
    lines.append(f"| JAX, {dtype} | {r['train_images_per_s']:,.0f} | {r['eval_images_per_s']:,.0f} | "
                 f"{ratio(r['train_images_per_s'], 'train_images_per_s')} | "
                 f"{ratio(r['eval_images_per_s'], 'eval_images_per_s')} |")
  if torch_results:
    for dtype in (d for d in TORCH_DTYPES if d in torch_results):
      for memory_format in ("nchw", "channels_last"):
        r = torch_results[dtype][memory_format]
        name = f"PyTorch {torch_results['torch_version']}, {dtype}, {memory_format}"
        lines.append(f"| {name} | {r['train_images_per_s']:,.0f} | {r['eval_images_per_s']:,.0f} | "
                     f"{ratio(r['train_images_per_s'], 'train_images_per_s')} | "
                     f"{ratio(r['eval_images_per_s'], 'eval_images_per_s')} |")
  return "\n".join(lines)


def conv_impls_to_measure() -> tuple[str, ...]:
  """XLA always; oneDNN too where its extension loads (alexnet_jax/model/cpu_kernels.py)."""
  return ("xla", "onednn") if cpu_kernels.resolve_conv_impl("auto") == "onednn" else ("xla",)


def measure(config: ml_collections.ConfigDict, steps: int, repeats: int, with_torch: bool,
            torch_dtypes: tuple[str, ...] = TORCH_DTYPES) -> dict[str, Any]:
  jax_results = {}
  for conv_impl in conv_impls_to_measure():
    for dtype in ("float32", "bfloat16"):
      variant = ml_collections.ConfigDict(config.to_dict())
      variant.model.dtype = dtype
      variant.model.conv_impl = conv_impl
      jax_results[f"{conv_impl}, {dtype}"] = jax_throughput(variant, steps, repeats)
  torch_results = torch_throughput(config, steps, repeats, torch_dtypes) if with_torch else None
  return {"environment": environment.describe(), "jax": jax_results, "torch": torch_results,
          "batch_size": config.batch_size,
          "eval_batch_size": config.eval_batch_size, "optimizer": config.optimizer,
          "augment": config.data.augment, "table": markdown_table(jax_results, torch_results)}


def main(argv: list[str]) -> None:
  del argv
  results = measure(FLAGS.config, FLAGS.steps, FLAGS.repeats, FLAGS.torch, tuple(FLAGS.torch_dtypes))
  print(results["table"], flush=True)
  if FLAGS.json_out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json_out)), exist_ok=True)
    with open(FLAGS.json_out, "w") as f:
      json.dump({k: v for k, v in results.items() if k != "table"}, f, indent=2)
  sys.exit(0)


if __name__ == "__main__":
  define_flags()
  app.run(main)
