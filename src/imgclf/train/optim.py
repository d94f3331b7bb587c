"""The optimizer of a training job: parameter groups and the learning-rate schedule.

Groups (torchvision's and timm's fine-tuning practice): the head trains at `lr`, the backbone at
`lr * backbone_lr_ratio` (an ImageNet backbone needs small steps, a fresh head large ones); weight
decay applies to weights of convolutions and linear layers, not to norm layers and biases (decaying
a batch-norm scale or a bias only fights the normalisation) unless `norm_weight_decay`. Frozen
parameters are left out. Each group keeps its `base_lr`; the schedule sets `lr` from it each step:
a linear warmup from 1/100 of it, then constant or a cosine decay to zero at the last step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..artifact.network import head

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
               nn.LocalResponseNorm)
WARMUP_START = 0.01  # the first step's fraction of the lr


def parameter_groups(model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_ratio: float = 1.0,
                     norm_weight_decay: bool = True) -> list[dict]:
    """SGD parameter groups, the head's first (their lr is the one the metrics report)."""
    head_params = {id(p) for p in head(model).parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            decays = norm_weight_decay or not (isinstance(module, NORM_LAYERS) or name == "bias")
            groups.setdefault((id(p) in head_params, decays), []).append(p)
    out = []
    for (is_head, decays), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], not kv[0][1])):
        group_lr = lr if is_head else lr * backbone_lr_ratio
        out.append({"params": params, "lr": group_lr, "base_lr": group_lr,
                    "weight_decay": weight_decay if decays else 0.0, "name": ("head" if is_head else "backbone")
                    + ("" if decays else " no-decay")})
    return out


def build_optimizer(model: nn.Module, args) -> torch.optim.SGD:
    """SGD over the trainable parameters of `model`, grouped as the resolved hyperparameters say."""
    groups = parameter_groups(model, lr=args.lr, weight_decay=args.weight_decay,
                              backbone_lr_ratio=args.backbone_lr_ratio, norm_weight_decay=args.norm_weight_decay)
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The fraction of each group's base lr at `step` (counted from 0)."""
    if step < warmup_steps:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, decay_steps) / decay_steps))


class Schedule:
    """Sets each group's lr for a global step; stateless, so a resumed job just names its step."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                 schedule: str):
        self.optimizer = optimizer
        self.total_steps = epochs * steps_per_epoch
        self.warmup_steps = min(self.total_steps, round(warmup_epochs * steps_per_epoch))
        self.schedule = schedule

    def set_step(self, step: int) -> None:
        factor = lr_factor(step, total_steps=self.total_steps, warmup_steps=self.warmup_steps, schedule=self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("base_lr", group["lr"]) * factor
