"""The training loop's steps: one epoch of training, one evaluation pass, and what they keep.

job.py builds a `Learner` (builders.py) and calls these; benches call `train_one_epoch` directly
so that they measure the product's own step.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..callbacks import Callback, Callbacks, StepRecord
from ..names import UserError
from . import distributed, precision
from .backbone import train_mode
from .ema import BestWeights, WeightsEma
from .optim import Schedule

log = logging.getLogger("imgclf.train")

SIGTERM_EXIT = 128 + signal.SIGTERM
# Steps between the ranks' agreement on SIGTERM on CUDA, where each agreement waits for the queued
# steps (a host sync): a few seconds of training at GPU step times.
STOP_CHECK_STEPS = 20


@dataclass
class TrainState:
    """What a checkpoint carries besides weights and optimizer."""

    epoch: int = 0  # completed epochs
    best_valid_loss: float = float("inf")
    epochs_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)

    def end_epoch(self, valid_loss: float) -> None:
        """Count the epoch and track the best validation loss for early stopping."""
        self.epoch += 1
        if valid_loss < self.best_valid_loss:
            self.best_valid_loss, self.epochs_without_improvement = valid_loss, 0
        else:
            self.epochs_without_improvement += 1

    def should_stop_early(self, patience: int) -> bool:
        return patience > 0 and self.epochs_without_improvement >= patience


class StopRequest:
    """Set by SIGTERM (a spot interruption or `docker stop`); the loop asks `seen` before each step.

    One process reads its flag at every step. The ranks of a distributed job must stop at the same
    step, so they agree on it with an all-reduce, which on CUDA waits for the steps queued before it:
    there they agree every `every` steps, counted from each epoch's first, the same steps on every rank.
    On a CPU each step's work is done when the host moves on, and the agreement costs no more than
    its one-number message beside the gradients' own: every step."""

    def __init__(self, every: int = 1):
        self.requested = False
        self.every = every

    @classmethod
    def for_device(cls, device: torch.device) -> StopRequest:
        return cls(STOP_CHECK_STEPS if device.type == "cuda" else 1)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: checkpointing and stopping")
        self.requested = True

    def seen(self, step: int, topology: distributed.Topology, device) -> bool:
        """Whether the loop stops before `step` (1 for an epoch's first): the same answer on every rank."""
        if not topology.distributed:
            return self.requested
        if (step - 1) % self.every:
            return False
        return distributed.any_rank(self.requested, topology, device)


@dataclass
class Learner:
    """The network, what updates it and where it runs: what a training step and an evaluation pass
    use. `net` is what the loop runs (the network, its DDP wrapper, or only its head when training
    on cached features); `model` stays the plain network."""

    model: nn.Module
    net: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    topology: distributed.Topology = field(default_factory=distributed.Topology)
    callbacks: Callback = field(default_factory=Callbacks)
    mixed: bool = False  # autocast and channels_last, as precision.choose settled them for this machine
    freeze_bn_stats: bool = False
    log_interval: int = 0  # steps between progress lines; 0 for none
    ema: WeightsEma | None = None  # validated each epoch beside the network; the best of both is kept
    best: BestWeights = field(default_factory=BestWeights)
    schedule: Schedule | None = None  # sets the lr before each step


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Tally:
    """Loss, correct and seen summed on the device (no host sync per step), plus skipped images."""

    def __init__(self, device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0
        self.skipped = 0

    def add(self, loss: torch.Tensor, output: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss += loss.detach().double() * len(targets)
        self.correct += (output.argmax(1) == targets).sum()
        self.seen += len(targets)

    def totals(self, topology, device) -> tuple[float, float, int, int]:
        """(loss sum, correct, seen, skipped) over all ranks."""
        loss, correct, seen, skipped = distributed.all_sum(
            [self.loss.item(), float(self.correct.item()), self.seen, self.skipped], topology, device)
        return loss, correct, int(seen), int(skipped)


def batches(loader, device, mixed: bool, tally: Tally):
    """(images, targets) on the device, in the training layout; unreadable images counted in `tally`."""
    for images, targets, n_skipped in loader:
        tally.skipped += n_skipped
        if len(targets):
            layout = precision.memory_format(mixed) if images.dim() == 4 else torch.contiguous_format
            yield (images.to(device, non_blocking=True, memory_format=layout),
                   targets.to(device, non_blocking=True))


class _Laps:
    """Seconds between calls, for the step's phases; waits for the GPU only when a callback asks."""

    def __init__(self, device, sync: bool):
        self.sync = sync and device.type == "cuda"
        self.device = device
        self.clock = time.perf_counter()

    def __call__(self) -> float:
        if self.sync:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.clock = now - self.clock, now
        return elapsed


def train_one_epoch(learner: Learner, loader, epoch: int, stop: StopRequest) -> tuple[Tally, bool]:
    """One pass over the training data. Returns (Tally, interrupted by SIGTERM)."""
    net, device, callbacks = learner.net, learner.device, learner.callbacks
    train_mode(net, learner.freeze_bn_stats)
    tally = Tally(device)
    start = time.perf_counter()
    lap = _Laps(device, callbacks.device_sync)
    for step, (images, targets) in enumerate(batches(loader, device, learner.mixed, tally), 1):
        data_s = lap()
        if stop.seen(step, learner.topology, device):
            return tally, True
        with precision.autocast(device, learner.mixed):
            output = net(images)
            loss = learner.criterion(output, targets)
        forward_s = lap()
        learner.optimizer.zero_grad(set_to_none=True)
        learner.scaler.scale(loss).backward()
        backward_s = lap()
        if learner.schedule is not None:
            learner.schedule.set_step((epoch - 1) * len(loader) + step - 1)
        learner.scaler.step(learner.optimizer)
        learner.scaler.update()
        if learner.ema is not None:
            learner.ema.update(unwrap(net))
        optimizer_s = lap()
        tally.add(loss, output, targets)
        callbacks.on_step_end(StepRecord(epoch, step, len(targets), loss.detach(), data_s, forward_s, backward_s,
                                         optimizer_s))
        if learner.log_interval and step % learner.log_interval == 0 and learner.topology.is_main:
            rate = tally.seen / (time.perf_counter() - start)
            log.info("epoch=%d step=%d/%d loss=%.4f images_per_sec=%.1f", epoch, step, len(loader), loss.item(), rate)
        lap()  # bookkeeping is nobody's phase
    return tally, False


@torch.inference_mode()
def evaluate(learner: Learner, loader, model: nn.Module | None = None,
             keep: list | None = None) -> tuple[float, float, int]:
    """(mean loss, accuracy, skipped images) of `model` (by default the network the learner trains)
    over the loader, summed over all ranks; `keep` receives this rank's (targets, class probabilities)
    per batch, on the CPU (train/evaluation.py)."""
    model = unwrap(learner.net) if model is None else model
    device = learner.device
    model.eval()
    tally = Tally(device)
    for images, targets in batches(loader, device, learner.mixed, tally):
        with precision.autocast(device, learner.mixed):
            output = model(images)
        tally.add(learner.criterion(output.float(), targets), output, targets)
        if keep is not None:
            keep.append((targets.cpu(), output.float().softmax(1).cpu()))
    loss_sum, correct, seen, skipped = tally.totals(learner.topology, device)
    if seen == 0:
        raise UserError("no readable images to evaluate on")
    return loss_sum / seen, correct / seen, skipped
