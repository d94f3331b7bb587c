"""System metrics sampled on a background thread: CPU per core, memory, I/O wait, disk and network
throughput (psutil), and GPU utilisation and memory when there are GPUs (NVML, through
nvidia-ml-py: the library nvidia-smi itself reads).

Cost: one psutil round and one NVML query per GPU per interval (well under a millisecond); nothing
on the training thread.
"""
from __future__ import annotations

import logging
import threading
import time

from .jobdata import SystemSamples

log = logging.getLogger("imgclf.profiler")

MB = 1024 * 1024


class GpuReader:
    """Utilisation and memory % per GPU from NVML (`pynvml`, the nvidia-ml-py package)."""

    def __init__(self, gpus: int):
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(gpus)]

    def sample(self) -> tuple[list[float], list[float]]:
        util, memory = [], []
        for handle in self.handles:
            util.append(float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            info = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            memory.append(100.0 * info.used / info.total if info.total else 0.0)
        return util, memory

    def close(self):
        self.nvml.nvmlShutdown()


class SystemMonitor:
    """Appends a sample to `samples` every `interval_ms` until `stop()`."""

    def __init__(self, samples: SystemSamples, interval_ms: int, gpus: int = 0):
        import psutil  # in the image; imported here so that the package imports without it

        self.psutil = psutil
        self.samples = samples
        self.interval = interval_ms / 1000
        self.gpu = None
        if gpus:
            try:
                self.gpu = GpuReader(gpus)
            except Exception as e:  # ImportError, or pynvml.NVMLError: no driver library
                log.warning("no GPU metrics: NVML is not available (%s: %s)", type(e).__name__, e)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imgclf-system-monitor", daemon=True)

    def start(self) -> SystemMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.gpu:
            self.gpu.close()

    def _run(self):
        ps = self.psutil
        ps.cpu_percent(percpu=True)  # the first call only starts the measurement
        ps.cpu_times_percent()
        disk, net, last = ps.disk_io_counters(), ps.net_io_counters(), time.time()
        while not self._stop.wait(self.interval):
            try:
                now = time.time()
                cores = ps.cpu_percent(percpu=True)
                times = ps.cpu_times_percent()
                disk2, net2 = ps.disk_io_counters(), ps.net_io_counters()
                dt = max(now - last, 1e-6)
                s = self.samples
                # every column grows in the same statement group, so a reader sees equal lengths up to `time`
                s.cpu_cores.append(cores)
                s.cpu.append(sum(cores) / len(cores))
                s.memory.append(ps.virtual_memory().percent)
                s.iowait.append(getattr(times, "iowait", 0.0))
                s.disk_read_mb_s.append(_rate(disk, disk2, "read_bytes", dt))
                s.disk_write_mb_s.append(_rate(disk, disk2, "write_bytes", dt))
                s.net_recv_mb_s.append(_rate(net, net2, "bytes_recv", dt))
                s.net_sent_mb_s.append(_rate(net, net2, "bytes_sent", dt))
                util, mem = self.gpu.sample() if self.gpu else ([], [])
                s.gpu.append(util)
                s.gpu_memory.append(mem)
                s.time.append(now)
                disk, net, last = disk2, net2, now
            except Exception as e:  # a monitoring failure must never stop training
                log.warning("system metrics stopped: %s: %s", type(e).__name__, e)
                return


def _rate(before, after, attr: str, seconds: float) -> float:
    if before is None or after is None:
        return 0.0
    return max(0, getattr(after, attr) - getattr(before, attr)) / MB / seconds
