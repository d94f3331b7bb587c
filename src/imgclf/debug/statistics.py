"""What the training rules need from the model itself: mean |gradient| per trainable tensor, the
spread of all gradients, and the variance of each ReLU's input (PoorWeightInitialization).

Torch is imported where used, so the package imports without it.
"""
from __future__ import annotations

import re

from .jobdata import JobData

GRADIENT_SAMPLE = 100_000  # gradient values kept for the percentile range


def record_gradients(model, data: JobData, step: int, ranges_of=None) -> None:
    """Mean |gradient| per trainable tensor (VanishingGradient); with `ranges_of` (the layers
    PoorWeightInitialization judges), the 5th-95th percentile width of a sample of their gradient values."""
    import torch

    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    if not named:
        return
    with torch.no_grad():
        means = torch.stack([g.detach().abs().float().mean() for _, g in named]).cpu().tolist()
        data.gradient_means.append((step, {name: m for (name, _), m in zip(named, means)}))
        judged = [p.grad for p in ranges_of.parameters() if p.grad is not None] if ranges_of is not None else []
        if judged:
            flat = torch.cat([g.detach().float().flatten() for g in judged])
            if flat.numel() > GRADIENT_SAMPLE:
                flat = flat[:: flat.numel() // GRADIENT_SAMPLE]
            lo, hi = torch.quantile(flat, torch.tensor([0.05, 0.95], device=flat.device)).cpu().tolist()
            data.gradient_ranges.append((step, hi - lo))


class ActivationVariances:
    """Forward pre-hooks on the ReLUs whose label (`<module>_relu_input`) matches `regex`; each
    training step's variances are collected in `step_variances`. Only training steps count: the
    monitor turns `training` on at each epoch's start and off at its evaluation, so validation,
    test, and the export's tracing and calibration after the last epoch are never recorded."""

    def __init__(self, model, regex: str):
        self.step_variances: dict[str, float] = {}
        self.training = False  # not module.training: a frozen backbone is in eval mode throughout
        self._handles = []
        pattern = re.compile(regex)
        for name, module in model.named_modules():
            label = f"{name or 'model'}_relu_input"
            if "relu" in type(module).__name__.lower() and pattern.fullmatch(label):
                self._handles.append(module.register_forward_pre_hook(self._hook(label)))

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def take(self) -> dict[str, float]:
        """The variances of the step just ended; the next step starts an empty record."""
        out, self.step_variances = self.step_variances, {}
        return out

    def _hook(self, label: str):
        def hook(module, inputs):
            if self.training:
                x = inputs[0].detach()
                # a module called several times per forward (torchvision's Bottleneck.relu) gets #2, #3
                key, k = label, 1
                while key in self.step_variances:
                    k += 1
                    key = f"{label}#{k}"
                self.step_variances[key] = float(x.float().var())

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
