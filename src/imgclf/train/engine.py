"""The training loop's steps: one epoch of training, one evaluation pass, and what they keep.

train.py builds the job and calls these; benches call `train_one_epoch` directly so that they
measure the product's own step.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..callbacks import Callback, StepRecord
from ..names import UserError
from . import distributed, precision
from .backbone import train_mode
from .ema import WeightsEma
from .optim import Schedule

log = logging.getLogger("imgclf.train")

SIGTERM_EXIT = 128 + signal.SIGTERM


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
    """Set by SIGTERM (a spot interruption or `docker stop`); the loop checks it between steps."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: checkpointing and stopping after this step")
        self.requested = True


def autocast(device: torch.device, enabled: bool):
    """Mixed precision when `enabled` (the job's `amp`, after precision.choose): see precision.py."""
    return precision.autocast(device, enabled)


def memory_format(device, args):
    return precision.memory_format(args.amp)


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


def batches(loader, device, args, tally: Tally):
    """(images, targets) on the device, in the training layout; unreadable images counted in `tally`."""
    for images, targets, n_skipped in loader:
        tally.skipped += n_skipped
        if len(targets):
            layout = memory_format(device, args) if images.dim() == 4 else torch.contiguous_format
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


def train_one_epoch(model, criterion, optimizer, scaler, loader, device, epoch, args, topology, stop,
                    callbacks: Callback, schedule: Schedule | None = None, weights_ema: WeightsEma | None = None):
    """One pass over the training data; `schedule` sets the lr before each step, `weights_ema` follows
    the weights after it. Returns (Tally, interrupted by SIGTERM)."""
    train_mode(model, args.freeze_bn_stats)
    tally = Tally(device)
    start = time.perf_counter()
    lap = _Laps(device, callbacks.device_sync)
    for step, (images, targets) in enumerate(batches(loader, device, args, tally), 1):
        data_s = lap()
        if distributed.any_rank(stop.requested, topology, device):
            return tally, True
        with autocast(device, args.amp):
            output = model(images)
            loss = criterion(output, targets)
        forward_s = lap()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        backward_s = lap()
        if schedule is not None:
            schedule.set_step((epoch - 1) * len(loader) + step - 1)
        scaler.step(optimizer)
        scaler.update()
        if weights_ema is not None:
            weights_ema.update(unwrap(model))
        optimizer_s = lap()
        tally.add(loss, output, targets)
        callbacks.on_step_end(StepRecord(epoch, step, len(targets), loss.detach(), data_s, forward_s, backward_s,
                                         optimizer_s))
        if args.log_interval and step % args.log_interval == 0 and topology.is_main:
            rate = tally.seen / (time.perf_counter() - start)
            log.info("epoch=%d step=%d/%d loss=%.4f images_per_sec=%.1f", epoch, step, len(loader), loss.item(), rate)
        lap()  # bookkeeping is nobody's phase
    return tally, False


@torch.inference_mode()
def evaluate(model, criterion, loader, device, args, topology) -> tuple[float, float, int]:
    """(mean loss, accuracy, skipped images) over the loader, summed over all ranks."""
    model.eval()
    tally = Tally(device)
    for images, targets in batches(loader, device, args, tally):
        with autocast(device, args.amp):
            output = model(images)
        tally.add(criterion(output.float(), targets), output, targets)
    loss_sum, correct, seen, skipped = tally.totals(topology, device)
    if seen == 0:
        raise UserError("no readable images to evaluate on")
    return loss_sum / seen, correct / seen, skipped
