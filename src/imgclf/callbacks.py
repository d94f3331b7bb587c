"""What watches a training job without changing it: one small interface for the training loop.

Tuning trials report their metric per epoch, the debugger saves tensors and evaluates rules, the
profiler times steps; each is a `Callback`. The loop calls, in order:

    on_train_begin(job)                 once: model, criterion, optimizer, args, environment
    on_epoch_begin(epoch)
    on_step_end(record)                 after each optimizer step, with a `StepRecord`
    on_evaluate_begin(split)            around each validation and test pass
    on_evaluate_end(split, metrics)
    on_epoch_end(epoch, metrics)        the epoch's metric line as a dict
    on_train_end(history)               after the artifact is written
    on_train_abort(reason)              instead, when SIGTERM or an exception ends the job: once,
                                        before the process exits (the report of a stopped job)

An exception raised by a callback ends the job like any other (a pruned tuning trial does so on
purpose); a callback that must never stop training (a profiler, a tracker) is a `FailSafeCallback`
with `@fail_safe` methods.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingJob:
    """What `on_train_begin` is handed."""

    model: Any  # torch.nn.Module, as trained (DistributedDataParallel unwrapped)
    criterion: Any
    optimizer: Any
    args: Any  # the parsed hyperparameters
    env: Any  # contract.TrainingEnvironment
    topology: Any  # distributed.Topology
    device: Any


@dataclass(frozen=True)
class StepRecord:
    """One training step: its place, its loss (a tensor: reading it syncs the device) and where
    its time went, in seconds. `data_s` is the wait for the batch."""

    epoch: int
    step: int
    batch_size: int
    loss: Any
    data_s: float
    forward_s: float
    backward_s: float
    optimizer_s: float

    @property
    def total_s(self) -> float:
        return self.data_s + self.forward_s + self.backward_s + self.optimizer_s


class Callback:
    """Every method is optional. `device_sync` asks the loop to wait for the GPU between phases,
    so that step timings measure the work and not its launch (costs speed; CUDA only)."""

    device_sync = False

    def on_train_begin(self, job: TrainingJob) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_step_end(self, record: StepRecord) -> None: ...

    def on_evaluate_begin(self, split: str) -> None: ...

    def on_evaluate_end(self, split: str, metrics: dict) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...

    def on_train_end(self, history: list[dict]) -> None: ...

    def on_train_abort(self, reason: str) -> None: ...


class FailSafeCallback(Callback):
    """A callback that never stops training: the first exception in one of its `@fail_safe` methods
    is logged once, with its traceback, and turns it off; its `@fail_safe` methods then do nothing.
    `what` names what stops, in that log line."""

    what = "callback"
    off = False

    def turn_off(self, error: Exception) -> None:
        """Logs why in one line, once (an MLflow server out of reach under network isolation is no
        fault of the job), the traceback at debug level; a subclass that holds threads or hooks
        releases them here too."""
        self.off = True
        first_line = str(error).splitlines()[0][:300] if str(error) else ""
        log.warning("%s stopped (training goes on): %s: %s", self.what, type(error).__name__, first_line)
        log.debug("%s stopped by:", self.what, exc_info=error)


def fail_safe(method):
    """A `FailSafeCallback` method that does nothing once the callback is off, and turns it off
    instead of raising."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.off:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            self.turn_off(e)
            return None

    return wrapper


class Callbacks(Callback):
    """Several callbacks as one, called in the order given."""

    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.callbacks = list(callbacks)
        self.device_sync = any(c.device_sync for c in self.callbacks)

    def on_train_begin(self, job):
        for c in self.callbacks:
            c.on_train_begin(job)

    def on_epoch_begin(self, epoch):
        for c in self.callbacks:
            c.on_epoch_begin(epoch)

    def on_step_end(self, record):
        for c in self.callbacks:
            c.on_step_end(record)

    def on_evaluate_begin(self, split):
        for c in self.callbacks:
            c.on_evaluate_begin(split)

    def on_evaluate_end(self, split, metrics):
        for c in self.callbacks:
            c.on_evaluate_end(split, metrics)

    def on_epoch_end(self, epoch, metrics):
        for c in self.callbacks:
            c.on_epoch_end(epoch, metrics)

    def on_train_end(self, history):
        for c in self.callbacks:
            c.on_train_end(history)

    def on_train_abort(self, reason):
        # the job is ending already: a callback's own failure here must not hide why
        for c in self.callbacks:
            try:
                c.on_train_abort(reason)
            except Exception:
                log.exception("%s could not finish after: %s", type(c).__name__, reason)
