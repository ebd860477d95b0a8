"""The hardware and software a measurement was taken on, recorded beside every benchmark number."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch")
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> tuple[str, list[str]]:
  """(model name, the listed CPU_FEATURES it has), from /proc/cpuinfo where there is one."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return platform.processor() or "unknown", []
  model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("model name")), "unknown")
  flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                if line.startswith("flags")), [])
  return model, [f for f in CPU_FEATURES if f in flags]


def describe() -> dict[str, Any]:
  """The hardware and software a result was measured on (package versions, CPU, devices)."""
  versions = {}
  for package in PACKAGES:
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      continue
  cpu_model, cpu_features = _cpuinfo()
  return {
      "versions": versions, "python": platform.python_version(),
      "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
      "platform": jax.default_backend(), "process_count": jax.process_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_model": cpu_model,
      "cpu_count": os.cpu_count(), "cpu_features": cpu_features,
  }


def markdown(env: dict[str, Any]) -> str:
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
  features = ", ".join(env["cpu_features"]) or "none of " + ", ".join(CPU_FEATURES)
  return (f"- Hardware: {env['device_count']} x {env['device_kind']} ({env['platform']}); CPU "
          f"{env['cpu_model']}, {env['cpu_count']} cores, features: {features}\n"
          f"- Software: Python {env['python']}; {versions}\n"
          f"- XLA_FLAGS: `{env['xla_flags'] or '(unset)'}`")
