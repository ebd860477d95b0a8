"""Experiment scripts: ablation sweeps, benchmarks and checks run against trained models."""
