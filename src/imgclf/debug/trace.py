"""A torch.profiler trace of a window of training steps, written as a Chrome trace
(`debug/trace-<host>-rank<r>-steps<first>-<last>.json`, open in chrome://tracing or Perfetto)."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("imgclf.profiler")

DEBUG_DIR = "debug"  # under the output data dir: profiles and traces


class StepTrace:
    def __init__(self, gpus: int):
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if gpus:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profile = torch.profiler.profile(activities=activities)
        self.profile.start()

    def save(self, output_data_dir: Path, host: str, rank: int, steps: tuple[int, int]) -> str:
        """Stop tracing and write the trace; its path relative to the output data dir."""
        self.profile.stop()
        first, last = steps
        name = f"{DEBUG_DIR}/trace-{host}-rank{rank}-steps{first}-{last}.json"
        path = Path(output_data_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.profile.export_chrome_trace(str(path))
        log.info("torch.profiler trace of steps %d-%d: %s (open in chrome://tracing or Perfetto)", first, last, path)
        return name

    def stop(self) -> None:
        self.profile.stop()
