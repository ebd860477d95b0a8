"""The layer table agrees with Flax's parameters and XLA's FLOP count."""

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax.model import alexnet, summary


@pytest.mark.parametrize("pooling", ["overlapping", "non_overlapping"])
def test_table_matches_flax_and_xla(pooling):
  model = alexnet.AlexNet(pooling=pooling)
  rows = summary.layer_table(model)
  variables = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 28, 28, 1)), train=False)
  assert sum(r.params for r in rows) == sum(x.size for x in jax.tree.leaves(variables["params"]))
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      variables, jnp.zeros((1, 28, 28, 1))).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA counts the multiply-adds that touch real pixels; activations and pooling add a little more.
  assert sum(r.flops_unpadded for r in rows) == pytest.approx(cost["flops"], rel=0.01)
  assert sum(r.flops for r in rows) > cost["flops"]
  assert rows[-1].output_shape == (10,)


def test_markdown_table_has_a_row_per_layer_and_a_total():
  rows = summary.layer_table(alexnet.AlexNet())
  table = summary.markdown_table(rows)
  assert table.count("\n") == len(rows) + 2
  assert "**4,557,514**" in table
