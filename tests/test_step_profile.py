"""The step profile attributes a real traced step to the network's own layers, and adds up."""

from __future__ import annotations

import pytest

from configs import smoke
from experiments import step_profile


@pytest.mark.parametrize(("op_name", "expected"), [
    ("jit(train_step)/jvp(AlexNet)/conv2/ffi_call", ("convolution", "conv2", "forward")),
    ("jit(train_step)/transpose(jvp(AlexNet))/bn1/mul", ("batch norm", "bn1", "backward")),
    ("jit(train_step)/transpose(jvp(AlexNet))/AlexNet._pool/jit(_where)", ("max pool", "AlexNet._pool",
                                                                          "backward")),
    ("jit(train_step)/jvp(AlexNet)/Dropout_1/jit(_bernoulli)", ("dropout", "Dropout_1", "forward")),
    ("jit(train_step)/vmap(jit(_map_coordinates))", ("augmentation", "", "forward")),
    ("jit(train_step)/transpose(jvp(jit(log_softmax)))", ("loss", "", "backward")),
    ("jit(train_step)/mul", ("optimizer, weight average, metrics", "", "")),
])
def test_op_names_are_attributed_to_their_layer_and_pass(op_name, expected):
  assert step_profile.classify(op_name) == expected


def test_concurrency_counts_overlap():
  events = [(0, 10, "a"), (5, 20, "b"), (30, 40, "c")]
  assert step_profile.concurrency(events) == {0: 10, 1: 25, 2: 5}


def test_a_traced_step_breaks_down_over_every_layer(tmp_path):
  config = smoke.get_config()
  result = step_profile.profile(config, steps=2, out=str(tmp_path))
  layers = {(r["layer"], r["pass"]) for r in result["layers_ms"]}
  # Every convolution runs forward and is differentiated (conv1 for its kernel only); so does batch norm.
  for n in range(1, 6):
    assert (f"conv{n}", "forward") in layers and (f"conv{n}", "backward") in layers
    assert (f"bn{n}", "forward") in layers
  parts = result["parts_ms"]
  assert min(parts.values()) >= 0 and sum(parts.values()) == pytest.approx(
      sum(r["ms"] for r in result["layers_ms"]), rel=1e-9)
  # Time with k operations running, summed over k, spans the traced operations: at least their time
  # divided by the most that ran at once, and no more than the wall time of the steps.
  spans = result["concurrency_ms"]
  busiest = max(spans)
  assert sum(parts.values()) / max(busiest, 1) <= sum(spans.values()) * (1 + 1e-9)
  assert sum(spans.values()) <= result["wall_ms_per_step"] * (1 + 1e-9)
  assert "| all operations |" in step_profile.markdown(result)
