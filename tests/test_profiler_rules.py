"""Profiler rules on hand-made step timings and system samples, and the system sampler itself."""
import logging
import time

import pytest

from imgclf.debug.jobdata import JobData, SystemSamples
from imgclf.debug.profiler_rules import (
    PROFILER_RULES,
    BatchSize,
    CPUBottleneck,
    Dataloader,
    GPUMemoryIncrease,
    IOBottleneck,
    LoadBalancing,
    LowGPUUtilization,
    MaxInitializationTime,
    StepOutlier,
    percentile,
)
from imgclf.debug.system import SystemMonitor
from imgclf.names import UserError


def with_steps(totals) -> JobData:
    data = JobData()
    for i, t in enumerate(totals, 1):
        s = data.steps
        s.epoch.append(1), s.step.append(i), s.end.append(float(i)), s.batch_size.append(8)
        s.data.append(t / 4), s.forward.append(t / 4), s.backward.append(t / 4), s.optimizer.append(t / 4)
    return data


def with_samples(n, gpus=1, cpu=50.0, gpu=50.0, gpu_memory=30.0, iowait=0.0) -> JobData:
    s = SystemSamples()
    for i in range(n):
        s.cpu.append(cpu(i) if callable(cpu) else cpu)
        s.iowait.append(iowait)
        s.gpu.append([gpu(i, g) if callable(gpu) else gpu for g in range(gpus)])
        s.gpu_memory.append([gpu_memory(i) if callable(gpu_memory) else gpu_memory for _ in range(gpus)])
        s.time.append(float(i))
    return JobData(gpus=gpus, system=s)


def test_step_outlier_counts_steps_over_mean_plus_three_sigma():
    data = with_steps([0.1] * 40 + [5.0])
    strict = StepOutlier(n_outliers=0)
    strict.check(data, final=True)
    assert strict.triggers == 1 and "1 of 41 steps" in strict.events[0]["message"]
    tolerant = StepOutlier()  # AWS default: 10 outliers tolerated
    tolerant.check(data, final=True)
    assert tolerant.triggers == 0 and tolerant.evaluations == 1
    with pytest.raises(UserError, match="TRAIN"):
        StepOutlier(mode="EVAL")


def test_gpu_rules_are_not_applicable_without_a_gpu():
    data = with_samples(2000, gpus=0)
    for cls in (CPUBottleneck, IOBottleneck, LowGPUUtilization, GPUMemoryIncrease, BatchSize, LoadBalancing):
        rule = cls()
        rule.check(data, final=True)
        assert rule.status.startswith("not applicable") and rule.evaluations == 0, cls.name


def test_sample_rules_wait_for_patience():
    rule = CPUBottleneck()
    rule.check(with_samples(999, cpu=99, gpu=0))
    assert rule.evaluations == 0 and "999 of 1000" in rule.status


def test_cpu_and_io_bottlenecks():
    cpu_bound = with_samples(1000, cpu=95, gpu=3)
    rule = CPUBottleneck()
    rule.check(cpu_bound)
    assert rule.triggers == 1 and "100.0 % of 1000 samples" in rule.events[0]["message"]
    busy_gpu = with_samples(1000, cpu=95, gpu=90)
    rule = CPUBottleneck()
    rule.check(busy_gpu)
    assert rule.triggers == 0
    io_bound = with_samples(1000, gpu=2, iowait=80)
    rule = IOBottleneck()
    rule.check(io_bound)
    assert rule.triggers == 1


def test_low_gpu_utilization_under_use_and_fluctuation():
    rule = LowGPUUtilization()
    rule.check(with_samples(1000, gpu=30))
    assert "under-used" in rule.events[0]["message"]
    rule = LowGPUUtilization()
    rule.check(with_samples(1000, gpu=lambda i, g: 95.0 if i % 2 else 0.0))
    assert "fluctuates" in rule.events[0]["message"]
    rule = LowGPUUtilization()
    rule.check(with_samples(1000, gpu=95))
    assert rule.triggers == 0


def test_gpu_memory_increase_between_windows():
    rule = GPUMemoryIncrease()
    rule.check(with_samples(1000, gpu_memory=lambda i: 10.0 if i < 990 else 30.0))
    assert rule.triggers == 1 and "10.0 % -> 30.0 %" in rule.events[0]["message"]
    rule = GPUMemoryIncrease()
    rule.check(with_samples(1000, gpu_memory=40.0))
    assert rule.triggers == 0


def test_batch_size_fires_when_everything_is_under_used():
    rule = BatchSize()
    rule.check(with_samples(1000, cpu=20, gpu=20, gpu_memory=10))
    assert rule.triggers == 1
    rule = BatchSize()
    rule.check(with_samples(1000, cpu=20, gpu=90, gpu_memory=10))
    assert rule.triggers == 0


def test_load_balancing_compares_gpu_histograms():
    rule = LoadBalancing()
    rule.check(with_samples(1000, gpus=2, gpu=lambda i, g: 95.0 if g == 0 else 5.0))
    assert rule.triggers == 1
    rule = LoadBalancing()
    rule.check(with_samples(1000, gpus=2, gpu=90))
    assert rule.triggers == 0


def test_dataloader_and_initialization_time():
    data = JobData(cpus=8, dataloader_workers=2, start=0.0, loop_start=30 * 60.0)
    dl, init = Dataloader(), MaxInitializationTime()
    dl.check(data), init.check(data)
    assert dl.triggers == 1 and "2 data loader processes on 8 CPU cores (25 %" in dl.events[0]["message"]
    assert init.triggers == 1 and "30.00 min" in init.events[0]["message"]
    data = JobData(cpus=8, dataloader_workers=8, start=0.0, loop_start=60.0)
    dl, init = Dataloader(), MaxInitializationTime(threshold=2)
    dl.check(data), init.check(data)
    assert dl.triggers == init.triggers == 0


def test_aws_defaults():
    d = {c.name: c.defaults for c in PROFILER_RULES}
    assert d["StepOutlier"]["stddev"] == 3 and d["StepOutlier"]["n_outliers"] == 10
    assert (d["CPUBottleneck"]["threshold"], d["CPUBottleneck"]["gpu_threshold"], d["CPUBottleneck"]["cpu_threshold"],
            d["CPUBottleneck"]["patience"]) == (50, 10, 90, 1000)
    assert d["LowGPUUtilization"]["threshold_p95"] == 70 and d["LowGPUUtilization"]["threshold_p5"] == 10
    assert d["GPUMemoryIncrease"]["increase"] == 5 and d["MaxInitializationTime"]["threshold"] == 20
    assert (d["Dataloader"]["min_threshold"], d["Dataloader"]["max_threshold"]) == (70, 200)
    assert d["LoadBalancing"]["threshold"] == 0.5


def test_percentile_interpolates_like_numpy():
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 95) == 5 and percentile([], 95) == 0.0


def test_system_monitor_samples_cpu_memory_and_io_on_a_thread():
    samples = SystemSamples()
    monitor = SystemMonitor(samples, interval_ms=50).start()
    time.sleep(0.5)
    monitor.stop()
    n = len(samples)
    assert n >= 4
    assert all(len(getattr(samples, k)) == n for k in ("cpu", "cpu_cores", "memory", "disk_read_mb_s", "gpu"))
    assert all(0 <= v <= 100 for v in samples.cpu + samples.memory)
    assert 0 < samples.memory[-1] and len(samples.cpu_cores[-1]) >= 1
    assert samples.gpu[-1] == []  # no GPU asked for
    time.sleep(0.2)
    assert len(samples) == n  # stopped


def _nvml_driver() -> bool:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_gpu_metrics_come_from_nvml_or_a_warning(caplog):
    """With an NVIDIA driver: one utilisation and memory value per GPU; without: one warning, CPU samples go on."""
    import torch

    driver = _nvml_driver()
    gpus = torch.cuda.device_count() if driver else 1
    samples = SystemSamples()
    with caplog.at_level(logging.WARNING, logger="imgclf.profiler"):
        monitor = SystemMonitor(samples, interval_ms=50, gpus=gpus).start()
    time.sleep(0.4)
    monitor.stop()
    assert len(samples) >= 3
    if driver:
        assert len(samples.gpu[-1]) == len(samples.gpu_memory[-1]) == gpus
        assert all(0 <= v <= 100 for v in samples.gpu[-1] + samples.gpu_memory[-1])
    else:
        assert monitor.gpu is None and "no GPU metrics: NVML is not available" in caplog.text
        assert samples.gpu[-1] == []
