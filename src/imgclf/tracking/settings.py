"""What a job's environment asks of experiment tracking, read once at the job's start.

MLflow: `MLFLOW_TRACKING_URI` names the server (http(s)://..., or the ARN of a SageMaker managed
MLflow tracking server, which the sagemaker-mlflow plugin resolves), `MLFLOW_EXPERIMENT_NAME` the
experiment. TensorBoard: SageMaker writes tensorboardoutputconfig.json when the job has a
TensorBoardOutputConfig, and uploads what the job writes to its LocalPath; the `tensorboard-dir`
hyperparameter asks for event files without it.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..names import SAGEMAKER_BASE_DIR

log = logging.getLogger("imgclf.tracking")

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "imgclf"
# set by the launcher on the trials of a SageMaker tuning job: the search's parent run
PARENT_RUN_ENV = "IMGCLF_MLFLOW_PARENT_RUN_ID"
IMAGE_ENV = "IMGCLF_IMAGE_URI"  # set by the launcher: the image the job runs, for the run's tags
JOB_NAME_ENV = "TRAINING_JOB_NAME"  # set by SageMaker in training containers
TENSORBOARD_CONFIG_FILE = "tensorboardoutputconfig.json"
TENSORBOARD_LOCAL_PATH = f"{SAGEMAKER_BASE_DIR}/output/tensorboard"  # SageMaker's default LocalPath


@dataclass(frozen=True)
class MlflowSettings:
    tracking_uri: str
    experiment: str = DEFAULT_EXPERIMENT
    parent_run_id: str | None = None
    run_name: str | None = None
    tags: dict = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], env=None) -> MlflowSettings | None:
        """None when no tracking server is named."""
        uri = environ.get(TRACKING_URI_ENV, "").strip()
        if not uri:
            return None
        job = environ.get(JOB_NAME_ENV)
        instance = _instance_type(getattr(env, "config_dir", None))
        tags = {"sagemaker.job_name": job, "imgclf.image": environ.get(IMAGE_ENV) or _package_version(),
                "sagemaker.instance_type": instance, "host": getattr(env, "current_host", None)}
        return cls(tracking_uri=uri, experiment=environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT,
                   parent_run_id=environ.get(PARENT_RUN_ENV) or None, run_name=job,
                   tags={k: v for k, v in tags.items() if v})


def tensorboard_dir(args, env) -> Path | None:
    """Where the job writes event files: the hyperparameter, else SageMaker's config file; None for neither."""
    if getattr(args, "tensorboard_dir", ""):
        return Path(args.tensorboard_dir)
    config_dir = getattr(env, "config_dir", None)
    path = Path(config_dir) / TENSORBOARD_CONFIG_FILE if config_dir else None
    if path is None or not path.is_file():
        return None
    try:
        return Path(json.loads(path.read_text()).get("LocalPath") or TENSORBOARD_LOCAL_PATH)
    except (ValueError, AttributeError) as e:
        log.warning("ignoring %s (%s): event files go to %s", path, e, TENSORBOARD_LOCAL_PATH)
        return Path(TENSORBOARD_LOCAL_PATH)


def _instance_type(config_dir) -> str | None:
    try:
        return json.loads((Path(config_dir) / "resourceconfig.json").read_text()).get("current_instance_type")
    except (TypeError, OSError, ValueError, AttributeError):
        return None


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"imgclf {version('imgclf')}"
    except PackageNotFoundError:
        return "imgclf"
