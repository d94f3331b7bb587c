"""The callback that watches a training job for the rules and the report.

It records each step's timings and loss, samples system metrics on a thread, collects the
gradient and activation statistics the training rules need (statistics.py), evaluates every rule
each `CHECK_INTERVAL` steps and after each epoch (verdicts in the log as they fire), and at the
end writes `profile-<host>-rank<r>.json` and, on the main process, the HTML report into the
output data dir. It never stops training: a failure inside it is logged once and turns it off.

Cost per step: a few list appends; every CHECK_INTERVAL steps one read of the buffered losses
(one device sync), the mean |gradient| of each trainable tensor and the rules.
"""
from __future__ import annotations

import json
import logging
import time

from ..artifact import mistakes
from ..artifact.baseline import read_evaluation
from ..callbacks import FailSafeCallback, fail_safe
from ..names import cpu_count
from . import report
from .jobdata import JobData
from .rules import PoorWeightInitialization
from .settings import MonitorSettings
from .statistics import ActivationVariances, record_gradients
from .trace import DEBUG_DIR, StepTrace

log = logging.getLogger("imgclf.profiler")

CHECK_INTERVAL = 10  # steps between rule evaluations


class Monitor(FailSafeCallback):
    what = "profiler and rules"

    def __init__(self, settings: MonitorSettings):
        self.settings = settings
        self.device_sync = settings.device_sync
        self.rules = settings.build_rules()
        self.data = JobData(start=_process_start(), interval_ms=settings.interval_ms)
        self.system = None
        self.trace: StepTrace | None = None
        self.activations: ActivationVariances | None = None
        self._model = None
        self._losses = []  # loss tensors not read yet (reading one syncs the device)
        self._global_step = 0
        self._poor_init = next((r for r in self.rules if isinstance(r, PoorWeightInitialization)), None)
        self._new_layers = None  # the layers PoorWeightInitialization judges
        self._topology = None

    # --- callback events -------------------------------------------------------------------

    @fail_safe
    def on_train_begin(self, job):
        import torch

        self._model, self._topology = job.model, job.topology
        d = self.data
        d.host, d.rank, d.world_size = job.env.current_host, job.topology.rank, job.topology.world_size
        d.cpus = cpu_count()
        d.gpus = torch.cuda.device_count() if job.device.type == "cuda" else 0
        if self.settings.profiler:
            from .system import SystemMonitor

            self.system = SystemMonitor(d.system, self.settings.interval_ms, d.gpus).start()
        if self._poor_init is not None:
            self._new_layers, self._poor_init.scope = PoorWeightInitialization.new_layers(job.model,
                                                                                             job.args.pretrained)
            self.activations = ActivationVariances(self._new_layers, self._poor_init.activation_inputs_regex)
        if self.settings.trace_steps and self.settings.trace_steps[0] == 1:
            self.trace = StepTrace(d.gpus)

    @fail_safe
    def on_step_end(self, record):
        self._global_step += 1
        n = self._global_step
        self._record_step(record)
        if self.activations is not None and self.activations.active:
            variances = self.activations.take()
            if variances:
                self.data.activation_variances.append((n, variances))
            if n >= self._poor_init.steps:
                self.activations.remove()
        early = self._poor_init is not None and n <= self._poor_init.steps
        if early:
            record_gradients(self._model, self.data, n, ranges_of=self._new_layers)
        if n == 2 and self.data.dataloader_workers is None:
            self.data.dataloader_workers = _count_workers()
        self._trace_window(n)
        if n % CHECK_INTERVAL == 0:
            if self.settings.rules and not early:
                record_gradients(self._model, self.data, n)
            self._check()

    @fail_safe
    def on_epoch_begin(self, epoch):
        if self.activations is not None:
            self.activations.training = True

    @fail_safe
    def on_evaluate_begin(self, split):
        if self.activations is not None:
            self.activations.training = False

    @fail_safe
    def on_evaluate_end(self, split, metrics):
        if split == "test":
            self.data.test = dict(metrics)

    @fail_safe
    def on_epoch_end(self, epoch, metrics):
        self.data.epochs.append(dict(metrics))
        self._check()

    @fail_safe
    def on_train_end(self, history):
        self._finish(gather=True)

    @fail_safe
    def on_train_abort(self, reason: str):
        """SIGTERM or an exception: the profile and the report all the same, saying how the job ended.
        No gathering: the other processes may never get there. A job that failed before it began
        (a missing channel, say) has nothing to report."""
        if self._model is None:
            return
        kind = "stopped" if "SIGTERM" in reason else "failed"
        self.data.ending = {"kind": kind, "reason": reason}
        self._finish(gather=False)

    def turn_off(self, error):
        super().turn_off(error)
        self._stop_threads()

    # --- helpers --------------------------------------------------------------------------

    def _finish(self, gather: bool) -> None:
        """This process's profile, and on the main process the report."""
        self.data.end = time.time()
        self._check(final=True)
        self._stop_threads()
        self.data.rules = [r.summary() for r in self.rules]
        profiles = self._gather() if gather else [self.data] if self._is_main() else []
        out = self.settings.output_data_dir
        (out / DEBUG_DIR).mkdir(parents=True, exist_ok=True)
        path = out / DEBUG_DIR / f"profile-{self.data.host}-rank{self.data.rank}.json"
        path.write_text(json.dumps(self.data.to_dict()))
        if profiles:
            html = report.write(profiles, out / report.REPORT_FILE, read_evaluation(out), mistakes.read(out))
            log.info("profiler report: %s", html)

    def _is_main(self) -> bool:
        return self._topology is None or self._topology.is_main

    def _record_step(self, record) -> None:
        now = time.time()
        d, s = self.data, self.data.steps
        if d.loop_start is None:
            d.loop_start = now - record.total_s
        d.loop_end = now
        s.epoch.append(record.epoch)
        s.step.append(self._global_step)
        s.end.append(now)
        s.batch_size.append(record.batch_size)
        s.data.append(record.data_s)
        s.forward.append(record.forward_s)
        s.backward.append(record.backward_s)
        s.optimizer.append(record.optimizer_s)
        self._losses.append(record.loss)

    def _trace_window(self, step: int) -> None:
        """Start the torch.profiler trace before its first step, save it after its last."""
        window = self.settings.trace_steps
        if self.trace is not None and step >= window[1]:
            trace, self.trace = self.trace, None
            self.data.traces.append(trace.save(self.settings.output_data_dir, self.data.host, self.data.rank, window))
        elif window and step + 1 == window[0]:
            self.trace = StepTrace(self.data.gpus)

    def _check(self, final: bool = False) -> None:
        self._read_losses()
        for rule in self.rules:
            rule.check(self.data, final)

    def _read_losses(self) -> None:
        if self._losses:
            import torch

            self.data.losses.extend(torch.stack([t.float() for t in self._losses]).cpu().tolist())
            self._losses = []

    def _stop_threads(self) -> None:
        if self.system is not None:
            self.system.stop()
            self.system = None
        if self.trace is not None:
            self.trace.stop()
            self.trace = None
        if self.activations is not None:
            self.activations.remove()

    def _gather(self) -> list[JobData]:
        """Every process's data on the main one (one report section per host and rank); [] elsewhere."""
        topo = self._topology
        if topo is None or topo.world_size == 1:
            return [self.data]
        import torch.distributed as dist

        gathered = [None] * topo.world_size
        try:
            dist.all_gather_object(gathered, self.data.to_dict())
        except Exception as e:
            log.warning("report without the other processes: gathering their profiles failed: %s", e)
            return [self.data] if topo.is_main else []
        return [JobData.from_dict(d) for d in gathered] if topo.is_main else []


def _count_workers() -> int | None:
    """Data loader processes: this process's children."""
    try:
        import psutil
    except ImportError:
        return None
    return len(psutil.Process().children())


def _process_start() -> float:
    """When this process started (the job's start for the report), else now."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time()
