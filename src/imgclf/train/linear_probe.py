"""The linear probe of `lp-ft`: fit the new head on cached backbone features before fine-tuning.

Fine-tuning from a random head lets its large early gradients distort the pretrained features;
fitting the head first on the frozen backbone's features, then fine-tuning everything, keeps them
(Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution"). The features come from the feature cache (features.py): one pass of the
backbone over the training and validation images with the evaluation transform, reused by later
jobs on the same data, so the probe costs seconds. It is a multinomial logistic regression fitted
with full-batch L-BFGS, with the job's label smoothing and a small L2 penalty.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from ..artifact.network import head
from . import features

log = logging.getLogger(__name__)

L2 = 1e-4  # on the head's weights: keeps logits moderate, so fine-tuning starts from calm gradients


def fit_head(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, *, steps: int, label_smoothing: float) -> float:
    """Fit `head` on features `x` and targets `y` in place; returns the final training loss."""
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=steps, history_size=20,
                                  line_search_fn="strong_wolfe")
    x, y = x.to(head.weight.device).float(), y.to(head.weight.device)

    def closure():
        optimizer.zero_grad()
        loss = criterion(head(x), y) + L2 * head.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float(criterion(head(x), y))


@torch.no_grad()
def accuracy(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((head(x.to(head.weight.device).float()).argmax(1) == y.to(head.weight.device)).float().mean())


def run(args, env, model: nn.Module, card, eval_datasets, num_workers: int, device, autocast: Callable) -> None:
    """Fit the head of `model` on the cached features of `eval_datasets` ((train, valid, test) with
    the evaluation transform), logging its validation accuracy."""
    start = time.perf_counter()
    feature_set = features.for_job(args, env, model, card, None, eval_datasets, num_workers, device, autocast)
    train, valid = (feature_set.dataset(s).tensors for s in ("train", "valid"))
    classifier = head(model)
    loss = fit_head(classifier, *train, steps=args.lp_steps, label_smoothing=args.label_smoothing)
    log.info("linear probe: %d L-BFGS steps on %d cached features, train_loss=%.4f valid_acc=%.4f (%.1f s)",
             args.lp_steps, len(train[0]), loss, accuracy(classifier, *valid), time.perf_counter() - start)
