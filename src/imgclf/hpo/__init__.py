"""The hyperparameter search space of the original project, as data.

lr 0.001-0.1 (logarithmic), momentum 0-1, batch size one of 32/64/128/256, objective the
validation accuracy; fine-tuning recipes add the backbone's lr ratio (below). The launcher turns
it into SageMaker parameter ranges, the local tuner (`search.py`, Optuna) into its suggestions. Importing this package does not import torch or Optuna.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..train.hyperparameters import CHECKPOINT, EXTRACT_FEATURES, FEATURES, LOG_INTERVAL, SERVING_FORMATS, typed
from ..train.recipe import DEFAULT_RECIPE, FREEZING, default_recipe

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


LINEAR_SPACE = {
    "lr": Continuous(0.001, 0.1, scale="Logarithmic"),
    "momentum": Continuous(0.0, 1.0, scale="Linear"),
    "batch-size": Categorical((32, 64, 128, 256)),
}
# Fine-tuning recipes: `lr` stays the head's lr, over the original range; the backbone trains at
# lr * backbone-lr-ratio, searched from 1/100 to the same lr (logarithmic), so the backbone's lr
# spans 1e-5 to 0.1.
FINETUNE_SPACE = {**LINEAR_SPACE, "backbone-lr-ratio": Continuous(0.01, 1.0, scale="Logarithmic")}
SEARCH_SPACES = {"linear": LINEAR_SPACE, "finetune": FINETUNE_SPACE, "lp-ft": FINETUNE_SPACE}
SEARCH_SPACE = SEARCH_SPACES[DEFAULT_RECIPE]  # the space of a job that leaves `recipe` at its default


def recipe_of(hyperparameters: dict) -> str:
    """The recipe that a job with these hyperparameters (raw or typed) runs."""
    names = {dest.replace("_", "-"): dest for dest in ("recipe", *FREEZING)}  # hyperparameter name -> dest
    given = typed({name: hyperparameters[name] for name in names if name in hyperparameters})
    values = {names[name]: value for name, value in given.items()}
    return values.get("recipe") or default_recipe(values)


def search_space(fixed: dict) -> dict:
    """The space of the recipe that the trials' fixed hyperparameters give them."""
    return SEARCH_SPACES.get(recipe_of(fixed), SEARCH_SPACE)


# The original project trained its final model for 15 epochs with the best trial's values.
FINAL_EPOCHS = 15
# How a trial ran, not what it found: left out of best.json and of the final training job.
TRIAL_ONLY = (FEATURES, EXTRACT_FEATURES, LOG_INTERVAL, SERVING_FORMATS, CHECKPOINT)
# Every trial's: its model is not served (the final job's is), so it skips the serving formats.
TRIAL_DEFAULTS = {SERVING_FORMATS: "false"}


def best_hyperparameters(trial: dict) -> dict:
    """best.json's hyperparameters of a trial: what it found, with the recipe it ran named (a trial on
    cached features runs linear's, which the final job, on images, would not get by default)."""
    hps = typed(trial)
    return {**{k: v for k, v in hps.items() if k not in TRIAL_ONLY}, "recipe": recipe_of(hps)}
