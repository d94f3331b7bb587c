"""What one training process observed, as plain lists: the rules read it during training and the
report reads it (as JSON, `profile-<host>-rank<r>.json`) after.

Times are seconds since the epoch (time.time()); step phases are seconds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..names import PROFILER_INTERVAL_MS

STEP_PHASES = ("data", "forward", "backward", "optimizer")


@dataclass
class Steps:
    """One entry per training step, column by column."""

    epoch: list[int] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    end: list[float] = field(default_factory=list)  # wall time at the step's end
    batch_size: list[int] = field(default_factory=list)
    data: list[float] = field(default_factory=list)
    forward: list[float] = field(default_factory=list)
    backward: list[float] = field(default_factory=list)
    optimizer: list[float] = field(default_factory=list)

    def __len__(self):
        return len(self.step)

    def total(self, i: int) -> float:
        return self.data[i] + self.forward[i] + self.backward[i] + self.optimizer[i]

    def totals(self) -> list[float]:
        return [self.total(i) for i in range(len(self))]


@dataclass
class SystemSamples:
    """One entry per sample; `cpu_cores` and the GPU columns hold one list per sample."""

    time: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # % of all cores
    cpu_cores: list[list[float]] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)  # % used
    iowait: list[float] = field(default_factory=list)  # % of CPU time waiting for I/O
    disk_read_mb_s: list[float] = field(default_factory=list)
    disk_write_mb_s: list[float] = field(default_factory=list)
    net_recv_mb_s: list[float] = field(default_factory=list)
    net_sent_mb_s: list[float] = field(default_factory=list)
    gpu: list[list[float]] = field(default_factory=list)  # % utilisation per GPU
    gpu_memory: list[list[float]] = field(default_factory=list)  # % memory used per GPU

    def __len__(self):
        return len(self.time)


# the columns with one number per sample (TensorBoard writes each as a scalar series)
SYSTEM_METRICS = tuple(f.name for f in fields(SystemSamples) if f.name not in ("time", "cpu_cores", "gpu", "gpu_memory"))


@dataclass
class JobData:
    host: str = "localhost"
    rank: int = 0
    world_size: int = 1
    cpus: int = 1
    gpus: int = 0
    dataloader_workers: int | None = None
    start: float = 0.0  # the process started
    loop_start: float | None = None  # first training step began
    loop_end: float | None = None  # last training step ended
    end: float | None = None  # the job's work was done (artifact written)
    interval_ms: int = PROFILER_INTERVAL_MS
    steps: Steps = field(default_factory=Steps)
    losses: list[float] = field(default_factory=list)  # training loss per step
    epochs: list[dict] = field(default_factory=list)  # the epoch metric lines
    test: dict = field(default_factory=dict)
    system: SystemSamples = field(default_factory=SystemSamples)
    gradient_means: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, tensor -> mean |g|)
    gradient_ranges: list[tuple[int, float]] = field(default_factory=list)  # (step, 95th - 5th percentile)
    activation_variances: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    rules: list[dict] = field(default_factory=list)  # Rule.summary() of each rule, at the end
    traces: list[str] = field(default_factory=list)  # torch.profiler trace files, relative to the report
    # a job that did not complete: {"kind": "stopped" (SIGTERM) or "failed", "reason": the failure line}
    ending: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.host if self.world_size == 1 else f"{self.host} rank {self.rank}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> JobData:
        d = dict(d)
        d["steps"] = Steps(**d.get("steps", {}))
        d["system"] = SystemSamples(**d.get("system", {}))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})
