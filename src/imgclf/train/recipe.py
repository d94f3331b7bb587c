"""Training recipes: named sets of defaults for the ingredients of a training job.

    linear    the frozen ImageNet backbone and a new head, SGD with the original tuning job's best
              lr/momentum/batch size, random crops and flips (the original project's recipe);
    finetune  (the default) the whole network trains, in batches half linear's size: the backbone
              at a fraction of the head's lr, warmup then cosine decay per step, weight decay except
              on norm layers and biases, label smoothing, batch-norm statistics kept, an EMA of the
              weights, and torchvision's 224/232 evaluation crop (TrivialAugmentWide and random
              erasing are ingredients too, off by default: they lost accuracy in a 15-epoch job);
    lp-ft     a linear probe of the head on cached backbone features first (seconds), then
              `finetune` from it (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features").

Each ingredient is its own hyperparameter (hyperparameters.py) whose default, None, means "as the
recipe says"; a value given by a user or the tuner wins, so any ingredient can be switched off
(label-smoothing=0, ema-decay=0, warmup-epochs=0, backbone-lr-ratio=1, auto-augment=none,
random-erase=0, lp-steps=0, ...). `resolve` fills them in once, when the hyperparameters are parsed.
Importing this module does not import torch.
"""
from __future__ import annotations

import argparse

from ..artifact.images import CLASSIC_CROP_RATIO  # torchvision's classic 224/256; finetune uses its 2021 224/232

AUTO_AUGMENTS = ("none", "trivialaugment", "randaugment")
LR_SCHEDULES = ("constant", "cosine")

# Best trial of the original project's tuning job (imgclf.hpo's search space): the training defaults.
BEST_KNOWN = {"lr": 0.0173, "momentum": 0.609, "batch-size": 64}

# ingredient (hyperparameter dest) -> value, per recipe
LINEAR = {
    "freeze": True,
    "batch_size": BEST_KNOWN["batch-size"],
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "ema_decay": 0.0,
    "warmup_epochs": 0.0,
    "lr_schedule": "constant",
    "backbone_lr_ratio": 1.0,
    "norm_weight_decay": True,
    "freeze_bn_stats": False,  # moot: the frozen backbone runs in evaluation mode anyway
    "crop_scale": 0.08,  # torchvision's RandomResizedCrop default
    "auto_augment": "none",
    "random_erase": 0.0,
    "eval_crop_ratio": CLASSIC_CROP_RATIO,
    "lp_steps": 0,
}
FINETUNE = {
    **LINEAR,
    "freeze": False,
    # twice linear's steps in the same epochs: on bench_recipe's data over 15 epochs, test accuracy
    # 0.843-0.846 at 32 against 0.819-0.830 at 64 and 0.836 at 16 (linear: 0.815 at 32, 0.811 at 64)
    "batch_size": BEST_KNOWN["batch-size"] // 2,
    "weight_decay": 1e-4,
    "label_smoothing": 0.1,
    "ema_decay": 0.99,  # per step; warmed up (ema.py), so it follows the weights closely at first
    "warmup_epochs": 1.0,
    "lr_schedule": "cosine",
    "backbone_lr_ratio": 0.1,
    "norm_weight_decay": False,
    # ImageNet statistics, not the batch's: batch statistics of a new domain (Fashion-MNIST) wrecked
    # the pretrained features (bench_recipe's 15 epochs: validation accuracy 0.70 -> 0.835)
    "freeze_bn_stats": True,
    # crop and flip only: on bench_recipe's data over 15 epochs, TrivialAugmentWide + random erasing
    # underfit (validation 0.835 with them, 0.86 without); switch them on for longer jobs
    "auto_augment": "none",
    "random_erase": 0.0,
    "eval_crop_ratio": 224 / 232,
}
RECIPES: dict[str, dict] = {
    "linear": LINEAR,
    "finetune": FINETUNE,
    "lp-ft": {**FINETUNE, "lp_steps": 100},  # L-BFGS iterations of the probe on cached features
}
# the best of the three in bench/bench_recipe.py's 15-epoch job (docs/benchmarks.md#recipe-bench), at
# about four times linear's training time
DEFAULT_RECIPE = "finetune"
INGREDIENTS = tuple(LINEAR)


# switches (hyperparameter dests) that freeze the backbone: cached backbone features need a frozen one
FREEZING = ("freeze", "features", "extract_features")


def default_recipe(values: dict) -> str:
    """The recipe of a job that names none, from its typed values by dest: linear's where a switch
    freezes the backbone, else the default."""
    return "linear" if any(values.get(name) for name in FREEZING) else DEFAULT_RECIPE


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of `args` with the recipe, and every ingredient left at None, set."""
    values = vars(args).copy()
    if values["recipe"] is None:
        values["recipe"] = default_recipe(values)
    chosen = RECIPES[values["recipe"]]
    if values.get("freeze_bn_stats") is None and not values["pretrained"]:
        values["freeze_bn_stats"] = False  # random initialisation has no statistics worth keeping
    for name in INGREDIENTS:
        if values.get(name) is None:
            values[name] = chosen[name]
    return argparse.Namespace(**values)

