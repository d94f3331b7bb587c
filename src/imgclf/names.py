"""Names, shared defaults and the user-error type: the leaf every layer imports.

The training job, the tuner, the launcher and serving read these from here; nothing here imports
torch, the SageMaker SDK or another module of the package.
"""
from __future__ import annotations

import os


class UserError(Exception):
    """A fault in what the user supplied (data, hyperparameters, flags): reported as such, exit code 2."""


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # every command's log lines (on stdout)

# SageMaker's tree in the container (input, model, output, checkpoints); SAGEMAKER_BASE_DIR moves it
SAGEMAKER_BASE_DIR = "/opt/ml"

# the model artifact: model.py writes it, serving and the launcher read it
WEIGHTS_FILE = "model.pt"  # the state_dict, loadable with torch.load(..., weights_only=True)
CARD_FILE = "model.json"  # arch, classes, eval settings, versions, serving formats
CALIBRATION_DIR = "calibration"  # training images kept in the artifact, to calibrate int8 at serving start-up
MODEL_ARCHIVE = "model.tar.gz"  # what SageMaker packs the model dir into

# the training job's input channels (features: features.py)
CHANNELS = ("training", "validation", "test", "pretrained", "features")

# profiler and debugger (imgclf.debug, the launcher's --sagemaker-debugger)
PROFILER_INTERVAL_MS = 500  # system metrics sampling interval, when neither hyperparameter nor config sets one
MIN_PROFILER_INTERVAL_MS = 50  # below this the sampling thread competes with training
DEBUG_SAVE_INTERVAL = 100  # steps between tensors saved by smdebug
MIN_DEBUG_SAVE_INTERVAL = 1

# the local tuner's pruners (hpo/search.py builds them; the launcher passes the name)
PRUNERS = ("median", "hyperband", "none")
DEFAULT_PRUNER = "median"


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, as a container's cpuset limits it), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
