"""Where a whole training step's time goes, part by part: every operation XLA runs, traced with
`jax.profiler` and attributed to the layer and pass (forward, backward) it came from:

  python -m experiments.step_profile --config configs/default.py [--steps 10] [--out runs/step_profile]

experiments/layer_profile.py times each convolution on its own; this traces the training loop's own
compiled step (`engine.Engine`, on a random device-resident batch) and reads back, per executed HLO
operation, its time: the convolutions (oneDNN's custom calls where `conv_impl` picks them), batch norm,
activations, pooling, dense layers, dropout, the on-device augmentation, the loss, and the optimizer with
the weight average. Each operation is named by the `op_name` metadata the compiled program keeps (the Flax
module path, with "transpose(...)" for the backward pass); a fusion carries the name of its root.

Also: how many operations ran at once. XLA's CPU runtime may run independent operations side by side; the
table says how much of the step had one running, several, or none (dispatch, waiting).
Writes OUT/step_profile.json and OUT/step_profile.md; the trace itself stays in OUT/trace (TensorBoard's
profile plugin or Perfetto read it).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from alexnet_jax import cli
from alexnet_jax.training import engine
from experiments import environment, throughput

FLAGS = flags.FLAGS
WARMUP_STEPS = 3
# Flax module names in op_name -> the kind of layer (AlexNet's conv1..5, bn1..5, fc1..3, Dropout_0/1).
_LAYER_KINDS = (("conv", "convolution"), ("bn", "batch norm"), ("fc", "dense"), ("Dropout", "dropout"),
                ("AlexNet._pool", "max pool"), ("AlexNet._activate", "activation"))


def define_flags() -> None:
  cli.define_config()
  flags.DEFINE_integer("steps", 10, "Traced steps (after warm-up); figures are per step.")
  flags.DEFINE_string("out", "runs/step_profile", "Where the trace and the tables go.")


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its op_name metadata, from a compiled program's text."""
  pattern = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', re.MULTILINE)
  return {m.group(1): m.group(2) for m in pattern.finditer(hlo_text)}


def classify(op_name: str) -> tuple[str, str, str]:
  """op_name -> (part, layer, pass): e.g. ("convolution", "conv2", "backward")."""
  path = op_name.split("/", 1)[-1] if op_name.startswith("jit(") else op_name
  backward = "transpose(" in path
  direction = "backward" if backward else "forward"
  layer_match = re.search(r"AlexNet\)+/([\w.]+)", path)
  if layer_match:
    layer = layer_match.group(1)
    for prefix, kind in _LAYER_KINDS:
      if layer.startswith(prefix):
        return kind, layer, direction
    return "other layer", layer, direction
  if path.startswith("vmap("):  # the per-example augmentation is the step's only vmap outside the network
    return "augmentation", "", "forward"
  if "log_softmax" in path or "_one_hot" in path:
    return "loss", "", direction
  if "threefry" in path or "_uniform" in path:
    return "random keys", "", "forward"
  return "optimizer, weight average, metrics", "", ""


def thunk_events(trace_dir: str, module: str = "train_step") -> list[tuple[int, int, str]]:
  """(start ns, end ns, HLO instruction) of every operation of `module` the CPU runtime executed."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}")
  plane = jax.profiler.ProfileData.from_file(max(paths, key=os.path.getmtime)).find_plane_with_name(
      "/host:CPU")
  events = []
  for line in plane.lines:
    for event in line.events:
      stats = dict(event.stats)
      if "hlo_op" in stats and module in str(stats.get("hlo_module", "")):
        events.append((int(event.start_ns), int(event.end_ns), str(stats["hlo_op"])))
  return events


def concurrency(events: list[tuple[int, int, str]]) -> dict[int, float]:
  """Nanoseconds with k operations running, for each k, over the span of the events."""
  edges = sorted([(start, 1) for start, _, _ in events] + [(end, -1) for _, end, _ in events])
  spent: dict[int, float] = collections.Counter()
  running, last = 0, edges[0][0]
  for time_ns, change in edges:
    spent[running] += time_ns - last
    running, last = running + change, time_ns
  return dict(spent)


def breakdown(events: list[tuple[int, int, str]], names: dict[str, str], steps: int) -> dict[str, Any]:
  """Per part, per (layer, pass) and per number of concurrent operations, milliseconds per step."""
  parts: dict[str, float] = collections.Counter()
  layers: dict[tuple[str, str, str], float] = collections.Counter()
  for start, end, instruction in events:
    part, layer, direction = classify(names.get(instruction, instruction))
    if instruction.startswith("ffi_call") and part == "convolution":
      part = "convolution (oneDNN custom call)"
    parts[part] += (end - start) / 1e6 / steps
    layers[(part, layer, direction)] += (end - start) / 1e6 / steps
  return {"parts_ms": dict(parts.most_common()),
          "layers_ms": [{"part": p, "layer": la, "pass": d, "ms": ms}
                        for (p, la, d), ms in sorted(layers.items(), key=lambda item: -item[1])],
          "concurrency_ms": {k: v / 1e6 / steps for k, v in sorted(concurrency(events).items())}}


def profile(config: ml_collections.ConfigDict, steps: int, out: str) -> dict[str, Any]:
  """Traces `steps` training steps of `config` into OUT/trace and returns their breakdown."""
  run = engine.Engine(config)
  state = run.place(run.initial_state())
  batch = throughput.random_batch(run, config.batch_size, np.random.default_rng(0))
  compiled = run.train_fn.lower(state, batch, run.rngs.train).compile()
  names = op_names(compiled.as_text())
  for _ in range(WARMUP_STEPS):
    state, metrics = compiled(state, batch, run.rngs.train)
  jax.block_until_ready(metrics)
  trace_dir = os.path.join(out, "trace")
  with jax.profiler.trace(trace_dir):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch, run.rngs.train)
    jax.block_until_ready(metrics)
    wall_ms = 1e3 * (time.perf_counter() - start) / steps
  result = breakdown(thunk_events(trace_dir), names, steps)
  result.update(wall_ms_per_step=wall_ms, steps=steps, batch_size=config.batch_size,
                conv_impl=config.model.get("conv_impl", ""), dtype=config.model.get("dtype", ""))
  return result


def markdown(result: dict[str, Any]) -> str:
  lines = [f"Step of {result['batch_size']} images: {result['wall_ms_per_step']:.0f} ms wall (traced, "
           f"{result['steps']} steps).", "", "| part | ms per step | share of operation time |",
           "|---|---:|---:|"]
  total = sum(result["parts_ms"].values())
  lines += [f"| {part} | {ms:.1f} | {100 * ms / total:.0f}% |" for part, ms in result["parts_ms"].items()]
  lines += [f"| all operations | {total:.1f} | |", "", "| part | layer | pass | ms per step |",
            "|---|---|---|---:|"]
  lines += [f"| {r['part']} | {r['layer']} | {r['pass']} | {r['ms']:.1f} |" for r in result["layers_ms"]
            if r["ms"] >= 0.5]
  lines += ["", "| operations running at once | ms per step |", "|---:|---:|"]
  lines += [f"| {k} | {ms:.1f} |" for k, ms in result["concurrency_ms"].items()]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  os.makedirs(FLAGS.out, exist_ok=True)
  result = profile(FLAGS.config, FLAGS.steps, FLAGS.out)
  result["environment"] = environment.describe()
  with open(os.path.join(FLAGS.out, "step_profile.json"), "w") as f:
    json.dump(result, f, indent=2)
  page = markdown(result)
  with open(os.path.join(FLAGS.out, "step_profile.md"), "w") as f:
    f.write(environment.markdown(result["environment"]) + "\n\n" + page + "\n")
  print(page, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
