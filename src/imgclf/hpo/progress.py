"""What a person sees while a local search runs: one plain line per event, and on a terminal a
status line kept at the bottom (trial n of N, epoch, best so far, elapsed, time left).

    trial 3/8 lr=0.0123 momentum=0.41 batch-size=64
    trial 3/8 epoch 1/3 valid_acc=0.7812 valid_loss=0.6123
    trial 3/8 pruned after epoch 2 valid_acc=0.4100 in 3.2 s | best valid_acc=0.8125 (trial 1) | 0:41 elapsed, about 1:20 left
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def format_params(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class Progress:
    """Progress of `total` trials, of which `done` were finished by an earlier run of the same search."""

    def __init__(self, total: int, done: int = 0, *, metric: str, epochs: int, stream: TextIO | None = None,
                 live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.total, self.done, self.metric, self.epochs = total, done, metric, epochs
        self.start = time.monotonic()
        self.durations: list[float] = []  # trials finished in this run
        self.best: tuple[float, int] | None = None
        self.trial = self.epoch = 0
        self.trial_start = self.start

    def set_best(self, value: float | None, trial: int | None) -> None:
        self.best = None if value is None else (value, trial)

    # events ---------------------------------------------------------------------------------

    def trial_begins(self, trial: int, params: dict) -> None:
        """`trial` is the study's trial number (from 1), which an interrupted trial run again moves past N."""
        self.trial, self.epoch, self.trial_start = trial, 0, time.monotonic()
        self._line(f"{self._name()} {format_params(params)}")

    def epoch_ends(self, epoch: int, metrics: dict) -> None:
        self.epoch = epoch
        shown = {k: metrics[k] for k in (self.metric, "valid_loss", "train_loss") if k in metrics}
        self._line(f"{self._name()} epoch {epoch}/{self.epochs} "
                   + " ".join(f"{k}={v:.4f}" for k, v in shown.items()))

    def trial_ends(self, state: str, value: float | None) -> None:
        seconds = time.monotonic() - self.trial_start
        self.durations.append(seconds)
        what = {"pruned": f"pruned after epoch {self.epoch}", "complete": "complete"}.get(state, state)
        result = f" {self.metric}={value:.4f}" if value is not None else ""
        name = self._name()
        self.done += 1
        self._line(f"{name} {what}{result} in {seconds:.1f} s | {self._summary()}")

    def note(self, text: str) -> None:
        self._line(text)

    def finish(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    # text -----------------------------------------------------------------------------------

    def _name(self) -> str:
        position = min(self.done + 1, self.total)
        return f"trial {self.trial}/{self.total}" if position == self.trial else \
            f"trial {self.trial} ({position}/{self.total})"

    def eta(self) -> float | None:
        """Seconds left: the mean duration of this run's finished trials times the trials to go."""
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * max(0, self.total - self.done)

    def _summary(self) -> str:
        best = f"best {self.metric}={self.best[0]:.4f} (trial {self.best[1]})" if self.best else "no best yet"
        eta = self.eta()
        left = f"about {clock(eta)} left" if eta is not None else "time left unknown"
        return f"{best} | {clock(time.monotonic() - self.start)} elapsed, {left}"

    def status(self) -> str:
        return f"[{self.done}/{self.total} done] {self._name()} epoch {self.epoch}/{self.epochs} | {self._summary()}"

    def _line(self, text: str) -> None:
        if self.live:  # the line above the status line, then the status line again
            self.stream.write(f"\r\x1b[K{text}\n{self.status()}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
