"""What SageMaker Debugger gave a training job, from the image itself.

    tensors.py          smdebug hook: losses, weights, gradients, biases saved where
                        debughookconfig.json (or a hyperparameter) says; never stops training
    jobdata.py          what one process observed: step timings, losses, system samples, epochs
    system.py           system metrics sampled on a thread (psutil; GPUs through NVML)
    rules.py            the rule base and the training rules (VanishingGradient, Overfit, ...)
    profiler_rules.py   the profiler rules (StepOutlier, CPUBottleneck, ...) on timings and samples
    settings.py         what the monitor is asked for: hyperparameters, then profilerconfig.json
    statistics.py       gradient and activation statistics that the training rules read
    trace.py            a torch.profiler trace of a window of steps
    monitor.py          the callback that collects, evaluates the rules and writes the report
    report.py           the self-contained HTML report, and `imgclf-report OUTPUT_DIR`
    charts.py           inline SVG charts for the report

`callbacks(args, env)` builds what the hyperparameters and the job's config files ask for.
"""
from __future__ import annotations

from ..callbacks import Callback
from .monitor import Monitor
from .settings import MonitorSettings
from .tensors import HookSettings, TensorSaver

__all__ = ["callbacks"]


def callbacks(args, env) -> list[Callback]:
    """The debugger and profiler callbacks that the job's hyperparameters and config files ask for."""
    out: list[Callback] = []
    hook = HookSettings.from_job(args, env)
    if hook is not None:
        out.append(TensorSaver(hook))
    settings = MonitorSettings.from_job(args, env)
    if settings.profiler or settings.rules:
        out.append(Monitor(settings))
    return out
