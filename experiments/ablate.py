"""Ablation sweeps: `python -m experiments.ablate SWEEP [--seeds N] [--root DIR] [--jobs J]
[--config.FIELD=VALUE ...]`.

SWEEP names a module in experiments/sweeps/ (alexnet_paper, optimizers, capacity) or a path to one. Each
(variant, seed) trains in ROOT/SWEEP/VARIANT/seed_S through `python -m alexnet_jax.main` with the
variant's overrides and `--config.seed=S`. Rerunning the same command skips finished runs and resumes
interrupted ones from their checkpoints; SIGTERM or Ctrl-C stops the running trainings cleanly. Extra
`--config.FIELD=VALUE` arguments apply to every run (a cheaper budget, say), before the variant's own
overrides. At the end ROOT/SWEEP/ holds results.csv (one row per run), results.md and results.png; a sweep
that names a field in COST_CURVES also gets cost.png: validation accuracy against training arithmetic, one
line per value of that field.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

from absl import app, flags

from experiments import runs, sweep_results

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a program: experiment modules import one another and define flags of their own."""
  flags.DEFINE_integer("seeds", 3, "Seeds per variant: first_seed, first_seed + 1, ...")
  flags.DEFINE_integer("first_seed", 0, "The first seed.")
  flags.DEFINE_string("root", "runs/sweeps", "Where the sweep's runs and results go (ROOT/SWEEP/).")
  flags.DEFINE_integer("jobs", 1, "Trainings at a time (each uses every core it can: 1 for clean timings).")
  flags.DEFINE_bool("results_only", False, "Do not train: rebuild the results from the finished runs.")
  flags.DEFINE_list("variants", [], "Train only these variants (default: all); the results table still "
                    "holds every finished run of the sweep.")


REQUIRED = ("BASE_CONFIG", "VARIANTS", "BASELINE", "TARGET_TRAIN_ACCURACY")


class SweepError(ValueError):
  """A sweep that does not exist or is malformed."""


def load_sweep(name_or_path: str) -> types.ModuleType:
  """experiments/sweeps/NAME.py, or any .py path, checked for the fields a sweep must define."""
  if name_or_path.endswith(".py"):
    if not os.path.isfile(name_or_path):
      raise SweepError(f"sweep file {name_or_path} not found")
    spec = importlib.util.spec_from_file_location(os.path.basename(name_or_path)[:-3], name_or_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(f"experiments.sweeps.{name_or_path}")
    except ModuleNotFoundError:
      available = sorted(f[:-3] for f in os.listdir(os.path.join(runs.REPO_ROOT, "experiments", "sweeps"))
                         if f.endswith(".py") and not f.startswith("_"))
      raise SweepError(f"no sweep named {name_or_path!r}; available: {', '.join(available)}") from None
  missing = [field for field in REQUIRED if not hasattr(module, field)]
  if missing:
    raise SweepError(f"sweep {name_or_path} lacks {', '.join(missing)}")
  if module.BASELINE not in module.VARIANTS:
    raise SweepError(f"sweep {name_or_path}: BASELINE {module.BASELINE!r} is not one of its VARIANTS")
  return module


def sweep_name(name_or_path: str) -> str:
  return os.path.basename(name_or_path)[:-3] if name_or_path.endswith(".py") else name_or_path


def run_specs(sweep: types.ModuleType, sweep_dir: str, seeds: list[int], extra: list[str]
              ) -> list[tuple[str, int, runs.RunSpec]]:
  specs = []
  config_path = os.path.join(runs.REPO_ROOT, sweep.BASE_CONFIG)  # trainings run from the repository root
  for variant, fields in sweep.VARIANTS.items():
    for seed in seeds:
      overrides = (*extra, *runs.config_overrides(fields), f"--config.seed={seed}")
      workdir = os.path.abspath(os.path.join(sweep_dir, variant, f"seed_{seed}"))
      spec = runs.RunSpec(f"{variant}/seed_{seed}", workdir, config_path, overrides)
      specs.append((variant, seed, spec))
  return specs


def collect(specs, sweep: types.ModuleType) -> list[dict]:
  rows = []
  for variant, seed, spec in specs:
    if runs.final_record(spec.workdir) is None:
      continue
    rows.append({"variant": variant, "seed": seed, "workdir": spec.workdir,
                 "overrides": " ".join(runs.config_overrides(sweep.VARIANTS[variant])),
                 **runs.summarize_run(spec.workdir, sweep.TARGET_TRAIN_ACCURACY)})
  return rows


def write_results(sweep_dir: str, name: str, sweep: types.ModuleType, rows: list[dict], *,
                  seeds: list[int], extra: list[str]) -> str:
  table = sweep_results.variant_statistics(rows, sweep.BASELINE)
  sweep_results.write_csv(os.path.join(sweep_dir, "results.csv"), rows)
  page = sweep_results.markdown(table, name, sweep.TARGET_TRAIN_ACCURACY, sweep.BASELINE,
                                extra_overrides=extra, seeds=seeds)
  sweep_results.plot(os.path.join(sweep_dir, "results.png"), rows, table, sweep.TARGET_TRAIN_ACCURACY)
  if hasattr(sweep, "COST_CURVES"):  # a cost sweep: accuracy against training arithmetic, a line per value
    curves = {variant: fields.get(sweep.COST_CURVES) for variant, fields in sweep.VARIANTS.items()}
    sweep_results.plot_cost(os.path.join(sweep_dir, "cost.png"), rows, table, curves, sweep.COST_CURVES,
                            references=getattr(sweep, "COST_REFERENCES", None))
    page += "![cost](cost.png)\n"
  with open(os.path.join(sweep_dir, "results.md"), "w") as f:
    f.write(page)
  return page


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parses everything but the --config.* overrides, which main hands to the trainings."""
  return FLAGS(runs.split_config_arguments(argv)[1])


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    sys.exit("usage: python -m experiments.ablate SWEEP [--seeds N] [--root DIR] [--jobs J] "
             "[--config.FIELD=VALUE ...]")
  try:
    sweep = load_sweep(argv[1])
  except SweepError as e:
    sys.exit(f"error: {e}")
  name = sweep_name(argv[1])
  sweep_dir = os.path.join(FLAGS.root, name)
  seeds = list(range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds))
  extra = runs.split_config_arguments(sys.argv)[0]
  specs = run_specs(sweep, sweep_dir, seeds, extra)
  failed = []
  unknown = sorted(set(FLAGS.variants) - set(sweep.VARIANTS))
  if unknown:
    sys.exit(f"error: --variants: {', '.join(unknown)} not in sweep {name} ({', '.join(sweep.VARIANTS)})")
  if not FLAGS.results_only:
    chosen = [spec for variant, _, spec in specs if not FLAGS.variants or variant in FLAGS.variants]
    try:
      codes = runs.RunPool(FLAGS.jobs).run(chosen)
    except KeyboardInterrupt as e:
      sys.exit(f"{e}")
    failed = [run for run, code in codes.items() if code != 0]
  rows = collect(specs, sweep)
  os.makedirs(sweep_dir, exist_ok=True)
  print(write_results(sweep_dir, name, sweep, rows, seeds=seeds, extra=extra), flush=True)
  print(f"{len(rows)} of {len(specs)} runs in the table; results in {sweep_dir}/", flush=True)
  if failed:
    sys.exit(f"error: {len(failed)} runs failed: {', '.join(failed)} (see their train.log)")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_parse_flags)
