"""An exponential moving average (EMA) of a network's weights, and the best weights seen.

The EMA averages the weights over the last steps: it is a smoother, often better network than
the last step's (torchvision's 2021 recipe, timm's ModelEmaV2). The job evaluates it on the
validation set each epoch beside the trained network and keeps whichever scored best (`BestWeights`);
that one is tested and saved. Its decay is warmed up, min(decay, (1 + n) / (10 + n)) after n
updates, so that the early, random-head weights fade out fast in a short job.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightsEma:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: average floating-point weights and buffers; copy counters (num_batches_tracked)."""
        decay = self.current_decay()
        self.updates += 1
        for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values()):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs.detach(), 1 - decay)
            else:
                mine.copy_(theirs)


class BestWeights:
    """A copy of the weights with the best validation (accuracy, then lower loss) offered so far."""

    def __init__(self):
        self.score: tuple[float, float] | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.label = ""

    def offer(self, model: nn.Module, valid_acc: float, valid_loss: float, label: str) -> bool:
        """Keep a copy of `model`'s weights when they score better than the kept ones; True if kept."""
        score = (valid_acc, -valid_loss)
        if self.score is not None and score <= self.score:
            return False
        self.score, self.label = score, label
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)
