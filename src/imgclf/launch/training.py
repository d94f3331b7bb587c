"""Training jobs: an SDK Estimator on the image, with the package's hyperparameters and metric lines.

Hyperparameters are checked here with the training job's own table (hyperparameters.py) before a
job starts, so a typo fails in a second on the user's machine rather than minutes later in a
container; nothing here imports torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from sagemaker.estimator import Estimator
from sagemaker.utils import name_from_base

from ..names import SAGEMAKER_BASE_DIR, UserError
from ..train.hyperparameters import parse as parse_hyperparameters
from ..train.metrics import metric_definitions
from ..train.toolkit import TORCH_DISTRIBUTED_ENABLED
from .options import INSTANCE_COUNT, MAX_RUN_S, TRAINING_INSTANCE_TYPE, VOLUME_SIZE_GB
from .account import AccountSettings
from .session import Target

BASE_JOB_NAME = "imgclf"
CHECKPOINT_LOCAL_PATH = f"{SAGEMAKER_BASE_DIR}/checkpoints"


def check_hyperparameters(hyperparameters: dict) -> dict[str, str]:
    """The values as the strings SageMaker passes, after the training parser accepted them."""
    as_strings = {name: str(value).lower() if isinstance(value, bool) else str(value)
                  for name, value in hyperparameters.items()}
    parse_hyperparameters(as_strings)  # raises UserError naming the bad name or value
    return as_strings


def distribution_hyperparameters(distribution: dict | None) -> dict[str, str]:
    """The SDK's `distribution` as the hyperparameter that its PyTorch estimator sends for it (a
    plain Estimator takes no `distribution`). The image runs torch_distributed, and uses torchrun
    for imgclf-train whenever a job has several processes, asked or not."""
    if not distribution:
        return {}
    others = sorted(set(distribution) - {"torch_distributed"})
    if others:
        raise UserError(f"the image runs torch_distributed only, not {', '.join(others)}")
    return {TORCH_DISTRIBUTED_ENABLED: json.dumps(bool(distribution["torch_distributed"].get("enabled")))}


@dataclass
class JobSpec:
    """What a training job needs besides its data."""

    image_uri: str
    hyperparameters: dict
    instance_type: str = TRAINING_INSTANCE_TYPE
    instance_count: int = INSTANCE_COUNT
    output_path: str | None = None  # default: the session's bucket on AWS
    checkpoint_s3_uri: str | None = None
    spot: bool = False
    max_run: int = MAX_RUN_S
    max_wait: int | None = None  # spot only: how long to wait for capacity, run time included
    volume_size: int = VOLUME_SIZE_GB
    base_job_name: str = BASE_JOB_NAME
    distribution: dict | None = None  # as the SDK's estimators take it: {"torch_distributed": {"enabled": True}}
    account: AccountSettings = AccountSettings()  # VPC, network isolation, KMS keys, tags, warm pool


def estimator_kwargs(spec: JobSpec, target: Target) -> dict:
    """Keyword arguments of `sagemaker.estimator.Estimator` for `spec` on `target`."""
    if target.local and (spec.spot or spec.checkpoint_s3_uri):
        raise UserError("spot training and checkpoint_s3_uri need SageMaker: leave them out in local mode")
    if spec.spot and spec.max_wait is not None and spec.max_wait < spec.max_run:
        raise UserError(f"max_wait ({spec.max_wait} s) must be at least max_run ({spec.max_run} s)")
    if spec.spot and spec.account.keep_alive_seconds:
        raise UserError("SageMaker keeps no warm pool for spot jobs: leave out --keep-alive-seconds or --spot")
    kwargs = dict(
        image_uri=spec.image_uri,
        role=target.role,
        instance_type=target.instance_type(spec.instance_type),
        instance_count=spec.instance_count,
        hyperparameters={**check_hyperparameters(spec.hyperparameters),
                         **distribution_hyperparameters(spec.distribution)},
        metric_definitions=metric_definitions(),
        output_path=spec.output_path,
        base_job_name=spec.base_job_name,
        max_run=spec.max_run,
        volume_size=spec.volume_size,
        sagemaker_session=target.session,
    )
    if spec.checkpoint_s3_uri:
        # SageMaker syncs this folder to S3 while the job runs and restores it on a restart,
        # which is how a spot interruption resumes from the last epoch.
        kwargs.update(checkpoint_s3_uri=spec.checkpoint_s3_uri, checkpoint_local_path=CHECKPOINT_LOCAL_PATH)
    if spec.spot:
        kwargs.update(use_spot_instances=True, max_wait=spec.max_wait or spec.max_run)
    kwargs.update(spec.account.estimator_kwargs())
    return kwargs


def estimator(spec: JobSpec, target: Target) -> Estimator:
    return Estimator(**estimator_kwargs(spec, target))


def train(est: Estimator, inputs: dict[str, str], *, wait: bool = True, job_name: str | None = None) -> str:
    """Start the job on `inputs` (channel -> URI); with `wait`, stream its logs until it ends.

    Returns the model artifact's URI when waited for, else the job name.
    """
    if "training" not in inputs and "features" not in inputs:
        raise UserError("no training channel: give a data root with train/ or a training URI "
                        "(or, with a frozen backbone, --features)")
    job_name = job_name or name_from_base(est.base_job_name or BASE_JOB_NAME)
    if est.output_path and est.output_path.startswith("file://"):
        # Local mode puts model.tar.gz straight into a file:// output path, not under the job's
        # name as SageMaker does on S3: a folder per job keeps the next job from overwriting it.
        est.output_path = f"{est.output_path.rstrip('/')}/{job_name}"
    est.fit(inputs, wait=wait, logs="All" if wait else "None", job_name=job_name)
    return est.model_data if wait else est.latest_training_job.name
