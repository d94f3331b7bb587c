"""Profiler rules: SageMaker Debugger's ProfilerReport rules, with their default parameters, on the
step timings and system samples of `JobData`. `patience` and `window` count system samples (one
per profiler interval, `profiler-interval-ms`), as in Debugger. Rules about GPUs say "not applicable"
on a job without one.
"""
from __future__ import annotations

import statistics

import numpy as np

from ..names import UserError
from .rules import Rule


def percentile(values, q: float) -> float:
    """numpy's q-th percentile (0-100, linear interpolation), 0.0 for no values."""
    return float(np.percentile(values, q)) if len(values) else 0.0


class ProfilerRule(Rule):
    kind = "profiler"
    needs_gpu = False

    def check(self, data, final=False):
        if self.needs_gpu and not data.gpus:
            self.not_applicable("no GPU in this job")
            return
        self.evaluate(data, final)

    def evaluate(self, data, final): ...


class _SampleRule(ProfilerRule):
    """Evaluates once per check on the samples so far, after `patience` samples."""

    needs_gpu = True

    def __init__(self, **params):
        super().__init__(**params)
        self._seen = 0
        self._hits = 0  # samples that met a rule's condition so far

    def evaluate(self, data, final):
        n = len(data.system)
        if n == self._seen:
            return
        if n < self.patience:
            self.status = f"waiting: {n} of {self.patience} samples (patience)"
            return
        self.judge(data.system, self._seen, n)
        self._seen = n

    def judge(self, samples, start: int, end: int) -> None: ...


class StepOutlier(ProfilerRule):
    name = "StepOutlier"
    defaults = {"stddev": 3, "mode": None, "n_outliers": 10}
    description = ("Triggers when more than n_outliers training steps took longer than the mean step duration plus "
                   "stddev standard deviations.")
    advice = ("Look at what the outlier steps have in common (the first step of an epoch waits for the data "
              "workers to start; checkpoints, evaluation and other processes on the host stall steps).")
    min_steps = 10

    def __init__(self, **params):
        super().__init__(**params)
        if self.mode not in (None, "TRAIN", "train"):
            raise UserError("rule StepOutlier: this job times training steps only (mode TRAIN or null)")
        self._seen = 0

    def evaluate(self, data, final):
        n = len(data.steps)
        # every 10 % more steps (and at the end): a pass over all steps costs O(n), the job O(n log n)
        if n == self._seen or n < self.min_steps or (n < self._seen * 1.1 and not final):
            return
        totals = data.steps.totals()
        mean, sd = statistics.fmean(totals), statistics.pstdev(totals)
        limit = mean + self.stddev * sd
        outliers = sum(t > limit for t in totals)
        self.verdict(outliers > self.n_outliers, f"step {len(totals)}",
                     f"{outliers} of {len(totals)} steps over {limit:.3f} s (mean {mean:.3f} s + {self.stddev} x "
                     f"{sd:.3f} s; {self.n_outliers} tolerated)", datapoints=len(totals) - self._seen)
        self._seen = len(totals)


class MaxInitializationTime(ProfilerRule):
    name = "MaxInitializationTime"
    defaults = {"threshold": 20}
    description = "Triggers when the first training step starts more than threshold minutes after the job started."
    advice = ("Initialisation is slow: copy less data before training (FastFile or Pipe input mode), build the "
              "image with the pretrained weights, or lower the number of data workers started.")

    def evaluate(self, data, final):
        if self.evaluations:
            return
        if data.loop_start is None:
            if final:
                self.not_applicable("no training step ran")
            return
        minutes = (data.loop_start - data.start) / 60
        self.verdict(minutes > self.threshold, "first step",
                     f"the first step started {minutes:.2f} min after the job (threshold {self.threshold} min)")


class Dataloader(ProfilerRule):
    name = "Dataloader"
    defaults = {"min_threshold": 70, "max_threshold": 200}
    description = ("Triggers when the data loader processes are fewer than min_threshold % or more than "
                   "max_threshold % of the CPU cores.")
    advice = "Set num-workers near the number of CPU cores per training process."

    def evaluate(self, data, final):
        if self.evaluations or data.dataloader_workers is None:
            return
        share = 100 * data.dataloader_workers / max(1, data.cpus)
        self.verdict(not self.min_threshold <= share <= self.max_threshold, "first steps",
                     f"{data.dataloader_workers} data loader processes on {data.cpus} CPU cores ({share:.0f} %, "
                     f"allowed {self.min_threshold}-{self.max_threshold} %)")


class _IdleGpuRule(_SampleRule):
    """Share of the samples in which the GPU idled (below gpu_threshold) while `busy` held."""

    what = ""

    def busy(self, s, i: int) -> bool: ...

    def judge(self, s, start, end):
        self._hits += sum(1 for i in range(start, end)
                          if s.gpu[i] and min(s.gpu[i]) < self.gpu_threshold and self.busy(s, i))
        share = 100 * self._hits / end
        self.verdict(share > self.threshold, f"sample {end}", f"{self.what} bottleneck in {share:.1f} % of {end} "
                     "samples", datapoints=end - start)


class CPUBottleneck(_IdleGpuRule):
    name = "CPUBottleneck"
    defaults = {"threshold": 50, "gpu_threshold": 10, "cpu_threshold": 90, "patience": 1000}
    description = ("Triggers when, in more than threshold % of the samples, GPU utilisation was below "
                   "gpu_threshold % while CPU utilisation was above cpu_threshold %.")
    advice = "The GPU waits for the CPU: more data workers, lighter augmentation, or an instance with more CPUs."
    what = "CPU"

    def busy(self, s, i):
        return s.cpu[i] > self.cpu_threshold


class IOBottleneck(_IdleGpuRule):
    name = "IOBottleneck"
    defaults = {"threshold": 50, "gpu_threshold": 10, "io_threshold": 50, "patience": 1000}
    description = ("Triggers when, in more than threshold % of the samples, GPU utilisation was below "
                   "gpu_threshold % while I/O wait was above io_threshold %.")
    advice = "The GPU waits for storage: use FastFile mode or local NVMe, pre-process into fewer larger files."
    what = "I/O"

    def busy(self, s, i):
        return s.iowait[i] > self.io_threshold


class LowGPUUtilization(_SampleRule):
    name = "LowGPUUtilization"
    defaults = {"threshold_p95": 70, "threshold_p5": 10, "window": 500, "patience": 1000}
    description = ("Per GPU over the last window samples: triggers when the 95th percentile of utilisation is below "
                   "threshold_p95 (under-used), or above it while the 5th percentile is below threshold_p5 "
                   "(fluctuating).")
    advice = "Raise the batch size, or use a smaller instance type; fluctuation points to an input bottleneck."

    def judge(self, s, start, end):
        recent = s.gpu[max(0, end - self.window):end]
        problems = []
        for g in range(len(recent[-1]) if recent else 0):
            values = [row[g] for row in recent if len(row) > g]
            p95, p5 = percentile(values, 95), percentile(values, 5)
            if p95 < self.threshold_p95:
                problems.append(f"GPU {g} under-used (p95 {p95:.0f} %)")
            elif p5 < self.threshold_p5:
                problems.append(f"GPU {g} fluctuates (p5 {p5:.0f} %, p95 {p95:.0f} %)")
        self.verdict(bool(problems), f"sample {end}", "; ".join(problems) or "GPUs busy", datapoints=end - start)


class GPUMemoryIncrease(_SampleRule):
    name = "GPUMemoryIncrease"
    defaults = {"increase": 5, "patience": 1000, "window": 10}
    description = ("Per GPU: triggers when the mean memory use of the last window samples is more than increase "
                   "percentage points above the mean of the window before.")
    advice = "Memory grows: look for tensors kept across steps (losses kept with their graph, growing lists)."

    def judge(self, s, start, end):
        w = self.window
        if end < 2 * w:
            return
        problems = []
        for g in range(len(s.gpu_memory[end - 1])):
            now = statistics.fmean(row[g] for row in s.gpu_memory[end - w:end])
            before = statistics.fmean(row[g] for row in s.gpu_memory[end - 2 * w:end - w])
            if now - before > self.increase:
                problems.append(f"GPU {g} memory {before:.1f} % -> {now:.1f} %")
        self.verdict(bool(problems), f"sample {end}", "; ".join(problems) or "GPU memory steady",
                     datapoints=end - start)


class BatchSize(_SampleRule):
    name = "BatchSize"
    defaults = {"cpu_threshold_p95": 70, "gpu_threshold_p95": 70, "gpu_memory_threshold_p95": 70,
                "patience": 1000, "window": 500}
    description = ("Over the last window samples: triggers when the 95th percentiles of CPU utilisation, GPU "
                   "utilisation and GPU memory are all below their thresholds.")
    advice = "The instance is under-used: raise the batch size, or choose a smaller instance type."

    def judge(self, s, start, end):
        lo = max(0, end - self.window)
        cpu = percentile(s.cpu[lo:end], 95)
        gpu = percentile([max(r) for r in s.gpu[lo:end] if r], 95)
        mem = percentile([max(r) for r in s.gpu_memory[lo:end] if r], 95)
        small = (cpu < self.cpu_threshold_p95 and gpu < self.gpu_threshold_p95
                 and mem < self.gpu_memory_threshold_p95)
        self.verdict(small, f"sample {end}", f"p95 CPU {cpu:.0f} %, GPU {gpu:.0f} %, GPU memory {mem:.0f} %",
                     datapoints=end - start)


class LoadBalancing(_SampleRule):
    name = "LoadBalancing"
    defaults = {"threshold": 0.5, "patience": 1000}
    description = ("With several GPUs: triggers when the histograms of two GPUs' utilisation differ by more than "
                   "threshold (total variation distance, 0 to 1).")
    advice = "One GPU works more than the others: check how the data is sharded and that every process has a GPU."

    def judge(self, s, start, end):
        gpus = len(s.gpu[end - 1])
        if gpus < 2:
            self.not_applicable("one GPU")
            return
        hists = [_histogram([row[g] for row in s.gpu[:end] if len(row) > g]) for g in range(gpus)]
        worst = max(0.5 * sum(abs(a - b) for a, b in zip(hists[i], hists[j]))
                    for i in range(gpus) for j in range(i + 1, gpus))
        self.verdict(worst > self.threshold, f"sample {end}",
                     f"largest distance between GPU utilisation histograms {worst:.2f}", datapoints=end - start)


def _histogram(values, bins: int = 10) -> list[float]:
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int(v / 100 * bins))] += 1
    n = max(1, len(values))
    return [c / n for c in counts]


PROFILER_RULES = (StepOutlier, CPUBottleneck, IOBottleneck, LowGPUUtilization, GPUMemoryIncrease, BatchSize,
                  Dataloader, MaxInitializationTime, LoadBalancing)
