"""The shipped configs and sweeps say what they claim; pyproject.toml declares what the experiments import."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import pathlib
import re
import sys
import tomllib

import pytest

from alexnet_jax.training import run_config
from experiments import ablate
from tests.conftest import REPO_ROOT

CONFIG_NAMES = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py") if p.stem != "__init__")
LOCAL_PACKAGES = {"alexnet_jax", "configs", "experiments", "tests"}


def test_original_config_is_the_papers_recipe():
  from configs import original  # noqa: PLC0415

  config = original.get_config()
  # Krizhevsky et al. 2012, section 5: SGD, batch 128, classical momentum 0.9, weight decay 5e-4.
  assert config.optimizer == "sgd"
  assert config.momentum == 0.9
  assert config.nesterov is False
  assert config.weight_decay == 5e-4
  assert config.model.normalization == "lrn"
  assert config.model.variant == "original"
  assert config.ema_decay == 0.0 and config.label_smoothing == 0.0


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_validates(name):
  run_config.validate_config(importlib.import_module(f"configs.{name}").get_config())


def test_sweep_variants_named_as_the_papers_sgd_use_plain_momentum():
  # The optimizers sweep pits AdamW against the paper's SGD (its docstring), which had no Nesterov.
  sweep = ablate.load_sweep("optimizers")
  sgd = {name: fields for name, fields in sweep.VARIANTS.items() if fields.get("optimizer") == "sgd"}
  assert sgd
  for name, fields in sgd.items():
    assert fields.get("nesterov") is False, name


def _distribution(requirement: str) -> str:
  """'jax>=0.10' -> 'jax'; names normalised as PyPI does (PEP 503)."""
  return _normalise(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))


def _normalise(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
  """Module -> distributions, for what is installed (PIL -> Pillow); reading it is slow, so once."""
  return importlib.metadata.packages_distributions()


def _declared() -> tuple[set[str], dict[str, set[str]]]:
  """(main dependencies, extra -> its dependencies), from pyproject.toml."""
  project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
  raw = project.get("optional-dependencies", {})

  def expand(requirements: list[str]) -> set[str]:
    """Distributions, with the project's own extras (`alexnet_jax[serve,export]`) expanded."""
    names = set()
    for requirement in requirements:
      own = re.fullmatch(rf"{project['name']}\[([^]]+)\]", requirement)
      names |= (set().union(*(expand(raw[e.strip()]) for e in own.group(1).split(","))) if own
                else {_distribution(requirement)})
    return names

  extras = {extra: expand(reqs) for extra, reqs in raw.items()}
  return {_distribution(r) for r in project["dependencies"]}, extras


@functools.cache
def _top_level_imports(path: pathlib.Path) -> tuple[set[str], set[str]]:
  """(third-party distributions, experiments modules) a file imports at module level: what importing it needs.

  Imports inside functions are the optional ones (experiments/throughput.py's PyTorch reference) and are left
  out.
  """
  modules, experiments_modules = set(), set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names = [node.module]
      if node.module == "experiments":
        experiments_modules.update(alias.name for alias in node.names)
    else:
      continue
    for name in names:
      parts = name.split(".")
      if parts[0] == "experiments" and len(parts) > 1:
        experiments_modules.add(parts[1])
      modules.add(parts[0])
  packages = _packages_distributions()
  third_party = {_normalise(packages.get(m, [m])[0]) for m in modules
                 if m not in sys.stdlib_module_names and m not in LOCAL_PACKAGES}
  return third_party, experiments_modules


def test_experiments_imports_are_declared():
  main, extras = _declared()
  # An experiment runs with the package and the `experiments` extra; the PyTorch reference also needs `bench`.
  for path in sorted((REPO_ROOT / "experiments").rglob("*.py")):
    third_party, _ = _top_level_imports(path)
    allowed = main | extras.get("experiments", set()) | extras["bench"]
    assert third_party <= allowed, f"{path.name} imports {sorted(third_party - allowed)}, not declared"


def test_test_extra_installs_what_the_default_suite_imports():
  # `pip install -e '.[test]'` must be enough for the tests, which import experiments, not installed ones.
  main, extras = _declared()
  allowed = main | extras["test"]
  for test_file in sorted((REPO_ROOT / "tests").glob("*.py")):
    pending = [test_file]
    done = set()
    while pending:
      path = pending.pop()
      if path in done:
        continue
      done.add(path)
      third_party, experiments_modules = _top_level_imports(path)
      assert third_party <= allowed, (
          f"{path.name} (imported by {test_file.name}) needs {sorted(third_party - allowed)}, which "
          "`pip install -e '.[test]'` does not install")
      for module in experiments_modules:
        module_path = REPO_ROOT / "experiments" / f"{module}.py"
        pending.append(module_path if module_path.exists() else module_path.with_suffix("") / "__init__.py")
