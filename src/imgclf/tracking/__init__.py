"""Experiment tracking where SageMaker users look: an MLflow run and TensorBoard event files.

    settings.py     what the job's environment asks for: MLFLOW_TRACKING_URI (a server, or a
                    SageMaker managed MLflow ARN), tensorboardoutputconfig.json or a hyperparameter
    mlflow.py       the MLflow run of a job (rank 0): hyperparameters, metrics per epoch, artifacts
    tensorboard.py  TensorBoard event files: loss per step, epoch metrics, system metrics
    search.py       a local tuning search as one parent run with a child run per trial
    launch.py       the launcher's --mlflow and --tensorboard flags

Neither ever stops training: a server that cannot be reached is one warning line.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from ..callbacks import Callback
from .settings import MlflowSettings, tensorboard_dir

__all__ = ["with_tracking"]


def with_tracking(callbacks: list[Callback], args, env, environ: Mapping[str, str] = os.environ) -> list[Callback]:
    """`callbacks` (the debugger's) followed by the trackers the job asks for: after them, so that the
    profiler report is written when the MLflow run stores it."""
    out = list(callbacks)
    logdir = tensorboard_dir(args, env)
    if logdir is not None:
        from .tensorboard import TensorBoardWriter

        out.append(TensorBoardWriter(logdir, system=_system_samples(callbacks)))
    settings = MlflowSettings.from_environ(environ, env)
    if settings is not None:
        from .mlflow import MlflowRun

        out.append(MlflowRun(settings))
    return out


def _system_samples(callbacks):
    """The profiler's system samples (imgclf.debug's Monitor), for TensorBoard; None when it is off."""
    from ..debug.monitor import Monitor

    monitor = next((c for c in callbacks if isinstance(c, Monitor)), None)
    return monitor.data.system if monitor is not None and monitor.settings.profiler else None
