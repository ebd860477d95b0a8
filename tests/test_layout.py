"""The package's layout: imports go one way (no cycle anywhere), and the training stack is layered.

Read from the source with `ast` (nothing is imported): every `import` and `from ... import`, at module level
or inside a function, counts.
"""

from __future__ import annotations

import ast
import pathlib

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "alexnet_jax"


def import_graph(package: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
  """Module -> the package's modules it imports (`from alexnet_jax.x import y` imports module x.y where
  there is one, else x)."""
  modules = {".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): path
             for path in package.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:
          candidate = f"{node.module}.{alias.name}"
          imported.add(candidate if candidate in modules else node.module)
      elif isinstance(node, ast.Import):
        imported.update(alias.name for alias in node.names)
    graph[name] = {m for m in imported if m in modules and m != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
  colour, stack = {}, []

  def visit(module: str) -> list[str] | None:
    colour[module] = "grey"
    stack.append(module)
    for dependency in sorted(graph[module]):
      if colour.get(dependency) == "grey":
        return stack[stack.index(dependency):] + [dependency]
      if dependency not in colour and (cycle := visit(dependency)):
        return cycle
    stack.pop()
    colour[module] = "black"
    return None

  for module in sorted(graph):
    if module not in colour and (cycle := visit(module)):
      return cycle
  return None


def test_no_import_cycle_in_the_package():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle(tmp_path):
  """The check above could fail: two modules of a package that import each other are reported."""
  package = tmp_path / "pkg"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "a.py").write_text("from pkg import b\n")
  (package / "b.py").write_text("def f():\n  from pkg.c import g\n")
  (package / "c.py").write_text("import pkg.a\n")
  assert find_cycle(import_graph(package)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
  (package / "c.py").write_text("")
  assert find_cycle(import_graph(package)) is None


def test_the_training_stack_is_layered():
  """main -> loop -> engine -> steps: each imports only what is below it."""
  graph = import_graph()
  assert "alexnet_jax.training.loop" in graph["alexnet_jax.main"]
  assert "alexnet_jax.training.engine" in graph["alexnet_jax.training.loop"]
  assert "alexnet_jax.training.steps" in graph["alexnet_jax.training.engine"]
  above_steps = {"alexnet_jax.training.engine", "alexnet_jax.training.loop"}
  assert not graph["alexnet_jax.training.steps"] & above_steps
  assert "alexnet_jax.training.loop" not in graph["alexnet_jax.training.engine"]
  # The training stack does no inference work: calibration is a stage of its own, run by main.
  for module in ("steps", "engine", "loop"):
    assert not {m for m in graph[f"alexnet_jax.training.{module}"] if ".inference." in m}, module
