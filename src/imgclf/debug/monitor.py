"""The callback that watches a training job for the rules and the report.

It records each step's timings and loss, samples system metrics on a thread, collects the
gradient and activation statistics the training rules need, evaluates every rule each
`CHECK_INTERVAL` steps and after each epoch (verdicts in the log as they fire), and at the end
writes `profile-<host>-rank<r>.json` and, on the main process, the HTML report into the output
data dir. It never stops training: a failure inside it is logged once and turns it off.

Cost per step: a few list appends; every CHECK_INTERVAL steps one read of the buffered losses
(one device sync), the mean |gradient| of each trainable tensor and the rules.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time

from ..callbacks import Callback
from . import report
from .jobdata import JobData
from .rules import PoorWeightInitialization
from .settings import MonitorSettings

log = logging.getLogger("imgclf.profiler")

CHECK_INTERVAL = 10  # steps between rule evaluations
DEBUG_DIR = "debug"  # under the output data dir: profiles and traces
GRADIENT_SAMPLE = 100_000  # gradient values kept for the percentile range


def _safe(method):
    """A failure inside the monitor is logged once and turns it off; training goes on."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            self.broken = True
            log.warning("profiler and rules stopped (training goes on): %s: %s", type(e).__name__, e, exc_info=True)
            self._stop_threads()
            return None

    return wrapper


class Monitor(Callback):
    def __init__(self, settings: MonitorSettings):
        self.settings = settings
        self.device_sync = settings.device_sync
        self.broken = False
        self.rules = settings.build_rules()
        self.data = JobData(start=_process_start(), interval_ms=settings.interval_ms)
        self.system = None
        self.trace = None
        self._model = None
        self._device = None
        self._losses = []  # loss tensors not read yet (reading one syncs the device)
        self._global_step = 0
        self._activation_hooks = []
        self._step_variances: dict[str, float] = {}
        self._evaluating = False  # in a validation or test pass (a frozen backbone is in eval mode throughout)
        self._poor_init = next((r for r in self.rules if isinstance(r, PoorWeightInitialization)), None)
        self._new_layers = None  # the layers PoorWeightInitialization judges
        self._topology = None

    # --- callback events -------------------------------------------------------------------

    @_safe
    def on_train_begin(self, job):
        import torch

        self._model, self._device, self._topology = job.model, job.device, job.topology
        d = self.data
        d.host, d.rank, d.world_size = job.env.current_host, job.topology.rank, job.topology.world_size
        d.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        d.gpus = torch.cuda.device_count() if job.device.type == "cuda" else 0
        if self.settings.profiler:
            from .system import SystemMonitor

            self.system = SystemMonitor(d.system, self.settings.interval_ms, d.gpus).start()
        if self._poor_init is not None:
            self._new_layers, self._poor_init.scope = PoorWeightInitialization.new_layers(job.model,
                                                                                             job.args.pretrained)
            self._hook_activations(self._new_layers, self._poor_init.activation_inputs_regex)
        if self.settings.trace_steps and self.settings.trace_steps[0] == 1:
            self._start_trace()

    @_safe
    def on_step_end(self, record):
        now = time.time()
        self._global_step += 1
        n = self._global_step
        d, s = self.data, self.data.steps
        if d.loop_start is None:
            d.loop_start = now - record.total_s
        d.loop_end = now
        s.epoch.append(record.epoch)
        s.step.append(n)
        s.end.append(now)
        s.batch_size.append(record.batch_size)
        s.data.append(record.data_s)
        s.forward.append(record.forward_s)
        s.backward.append(record.backward_s)
        s.optimizer.append(record.optimizer_s)
        self._losses.append(record.loss)
        if self._activation_hooks:
            if self._step_variances:
                d.activation_variances.append((n, self._step_variances))
            self._step_variances = {}
            if n >= self._poor_init.steps:
                self._unhook_activations()
        early = self._poor_init is not None and n <= self._poor_init.steps
        if early:
            self._gradient_statistics(n, ranges=True)
        if n == 2 and d.dataloader_workers is None:
            d.dataloader_workers = self._count_workers()
        if self.trace is not None and n >= self.settings.trace_steps[1]:
            self._stop_trace()
        elif self.settings.trace_steps and n + 1 == self.settings.trace_steps[0]:
            self._start_trace()
        if n % CHECK_INTERVAL == 0:
            if self.settings.rules and not early:
                self._gradient_statistics(n, ranges=False)
            self._check()

    @_safe
    def on_evaluate_begin(self, split):
        self._evaluating = True

    @_safe
    def on_evaluate_end(self, split, metrics):
        self._evaluating = False
        if split == "test":
            self.data.test = dict(metrics)

    @_safe
    def on_epoch_end(self, epoch, metrics):
        self.data.epochs.append(dict(metrics))
        self._check()

    @_safe
    def on_train_end(self, history):
        self._finish(gather=True)

    @_safe
    def on_train_abort(self, reason: str):
        """SIGTERM or an exception: the profile and the report all the same, saying how the job ended.
        No gathering: the other processes may never get there."""
        kind = "stopped" if "SIGTERM" in reason else "failed"
        self.data.ending = {"kind": kind, "reason": reason}
        self._finish(gather=False)

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
            html = report.write(profiles, out / report.REPORT_FILE)
            log.info("profiler report: %s", html)

    def _is_main(self) -> bool:
        return self._topology is None or self._topology.is_main

    def _check(self, final: bool = False) -> None:
        self._read_losses()
        for rule in self.rules:
            rule.check(self.data, final)

    def _read_losses(self) -> None:
        if self._losses:
            import torch

            self.data.losses.extend(torch.stack([t.float() for t in self._losses]).cpu().tolist())
            self._losses = []

    def _gradient_statistics(self, step: int, ranges: bool) -> None:
        """Mean |gradient| per trainable tensor (VanishingGradient); with `ranges`, the 5th-95th
        percentile width of a sample of the new layers' gradient values (PoorWeightInitialization)."""
        import torch

        named = [(name, p.grad) for name, p in self._model.named_parameters() if p.grad is not None]
        if not named:
            return
        with torch.no_grad():
            means = torch.stack([g.detach().abs().float().mean() for _, g in named]).cpu().tolist()
            self.data.gradient_means.append((step, {name: m for (name, _), m in zip(named, means)}))
            new = [p.grad for p in self._new_layers.parameters() if p.grad is not None] if ranges else []
            if new:
                flat = torch.cat([g.detach().float().flatten() for g in new])
                if flat.numel() > GRADIENT_SAMPLE:
                    flat = flat[:: flat.numel() // GRADIENT_SAMPLE]
                lo, hi = torch.quantile(flat, torch.tensor([0.05, 0.95], device=flat.device)).cpu().tolist()
                self.data.gradient_ranges.append((step, hi - lo))

    def _hook_activations(self, model, regex: str) -> None:
        """Variance of each ReLU's input (named `<module>_relu_input`, matched against `regex`)."""
        import re

        pattern = re.compile(regex)
        for name, module in model.named_modules():
            kind = type(module).__name__.lower()
            label = f"{name or 'model'}_relu_input"
            if "relu" in kind and pattern.fullmatch(label):
                self._activation_hooks.append(module.register_forward_pre_hook(self._activation_hook(label)))

    def _activation_hook(self, label: str):
        def hook(module, inputs):
            if not self._evaluating:
                x = inputs[0].detach()
                # a module called several times per forward (torchvision's Bottleneck.relu) gets #2, #3
                key, k = label, 1
                while key in self._step_variances:
                    k += 1
                    key = f"{label}#{k}"
                self._step_variances[key] = float(x.float().var())

        return hook

    def _unhook_activations(self) -> None:
        for handle in self._activation_hooks:
            handle.remove()
        self._activation_hooks = []

    def _count_workers(self) -> int | None:
        """Data loader processes: this process's children, less the nvidia-smi reader."""
        try:
            import psutil
        except ImportError:
            return None
        skip = {self.system.gpu.proc.pid} if self.system and self.system.gpu else set()
        return sum(1 for c in psutil.Process().children() if c.pid not in skip)

    def _start_trace(self) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.data.gpus:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.trace = torch.profiler.profile(activities=activities)
        self.trace.start()

    def _stop_trace(self) -> None:
        trace, self.trace = self.trace, None
        trace.stop()
        first, last = self.settings.trace_steps
        name = f"{DEBUG_DIR}/trace-{self.data.host}-rank{self.data.rank}-steps{first}-{last}.json"
        path = self.settings.output_data_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        trace.export_chrome_trace(str(path))
        self.data.traces.append(name)
        log.info("torch.profiler trace of steps %d-%d: %s (open in chrome://tracing or Perfetto)", first, last, path)

    def _stop_threads(self) -> None:
        if self.system is not None:
            self.system.stop()
            self.system = None
        if self.trace is not None:
            self.trace.stop()
            self.trace = None
        self._unhook_activations()

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


def _process_start() -> float:
    """When this process started (the job's start for the report), else now."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time()
