"""Sweep definitions for `python -m experiments.ablate SWEEP`.

A sweep is a module with BASE_CONFIG (a config file), VARIANTS (name -> {config field: value}), BASELINE
(the variant the others are compared with) and TARGET_TRAIN_ACCURACY (for "steps to target").
"""
