"""The hyperparameter search space of the original project, as data.

lr 0.001-0.1 (logarithmic), momentum 0-1, batch size one of 32/64/128/256, objective the
validation accuracy. The launcher turns it into SageMaker parameter ranges, the local tuner
(`search.py`, Optuna) into its suggestions. Importing this package does not import torch or Optuna.
"""
from __future__ import annotations

from dataclasses import dataclass

OBJECTIVE_METRIC = "valid_acc"
OBJECTIVE_TYPE = "Maximize"


@dataclass(frozen=True)
class Continuous:
    low: float
    high: float
    scale: str = "Auto"  # SageMaker's ScalingType: Auto, Linear, Logarithmic


@dataclass(frozen=True)
class Categorical:
    values: tuple


SEARCH_SPACE = {
    "lr": Continuous(0.001, 0.1, scale="Logarithmic"),
    "momentum": Continuous(0.0, 1.0, scale="Linear"),
    "batch-size": Categorical((32, 64, 128, 256)),
}

# The original project trained its final model for 15 epochs with the best trial's values.
FINAL_EPOCHS = 15
# How a trial ran, not what it found: left out of best.json and of the final training job.
TRIAL_ONLY = ("features", "extract-features", "log-interval", "serving-formats", "checkpoint")
# Every trial's: its model is not served (the final job's is), so it skips the serving formats.
TRIAL_DEFAULTS = {"serving-formats": "false"}
