"""TensorBoard event files of a training job (main process), where SageMaker's
TensorBoardOutputConfig uploads them from or where the `tensorboard-dir` hyperparameter says.

Scalars: `train/loss` per training step; `epoch/<metric>` per epoch (train_loss, train_acc,
valid_loss, valid_acc, lr, images_per_sec); `test/<metric>` at the last epoch; `system/<metric>`
per profiler sample (CPU, memory, I/O wait, disk and network, GPUs), with the sample's wall time.
Losses are read once per epoch (reading one syncs the device). Written with tensorboardX, which
needs numpy and protobuf only; any failure is one warning line and training goes on.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..callbacks import FailSafeCallback, fail_safe
from ..debug.jobdata import SYSTEM_METRICS

log = logging.getLogger("imgclf.tracking")


class TensorBoardWriter(FailSafeCallback):
    what = "TensorBoard event files"

    def __init__(self, logdir: Path, system=None):
        self.logdir = Path(logdir)
        self.system = system  # debug.jobdata.SystemSamples, filled by the profiler's thread
        self.writer = None
        self._losses = []  # (global step, loss tensor) not written yet
        self._global_step = 0
        self._samples_written = 0
        self._epoch = 0

    @fail_safe
    def on_train_begin(self, job) -> None:
        if not job.topology.is_main:
            self.off = True
            return
        from tensorboardX import SummaryWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(logdir=str(self.logdir))
        log.info("TensorBoard event files in %s", self.logdir)

    @fail_safe
    def on_step_end(self, record) -> None:
        self._global_step += 1
        self._losses.append((self._global_step, record.loss))

    @fail_safe
    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self._epoch = epoch
        self._write_losses()
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self._write_system()
        self.writer.flush()

    @fail_safe
    def on_evaluate_end(self, split: str, metrics: dict) -> None:
        if split == "test":
            for key, value in metrics.items():
                self.writer.add_scalar(f"test/{key}", value, self._epoch)

    @fail_safe
    def on_train_end(self, history) -> None:
        self._close()

    @fail_safe
    def on_train_abort(self, reason: str) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is None:
            return
        try:
            self._write_losses()  # may fail after a device error: the rest is written all the same
        finally:
            self._write_system()
            self.writer.close()
            self.writer = None

    def _write_losses(self) -> None:
        if not self._losses:
            return
        import torch

        steps = [s for s, _ in self._losses]
        values = torch.stack([t.detach().float() for _, t in self._losses]).cpu().tolist()
        self._losses = []
        for step, value in zip(steps, values):
            self.writer.add_scalar("train/loss", value, step)

    def _write_system(self) -> None:
        s = self.system
        if s is None:
            return
        end = len(s.time)
        for i in range(self._samples_written, end):
            for name in SYSTEM_METRICS:
                column = getattr(s, name)
                if i < len(column):
                    self.writer.add_scalar(f"system/{name}", column[i], i, walltime=s.time[i])
            for g, value in enumerate(s.gpu[i] if i < len(s.gpu) else []):
                self.writer.add_scalar(f"system/gpu{g}_utilisation", value, i, walltime=s.time[i])
        self._samples_written = end
