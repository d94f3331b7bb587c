"""Where jobs run: a SageMaker session on AWS, or local mode with Docker and no AWS account.

Local mode needs no credentials, yet boto3 insists on a region and the SDK signs requests it
never sends: both get dummy values here, on a boto3 session of our own, so the user's AWS
configuration is neither read nor changed. Telemetry is opted out through the SDK config so no
call leaves the machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import boto3
import sagemaker
from sagemaker.local import LocalSession

from ..names import UserError
from .options import LOCAL_SERVING_PORT

LOCAL_REGION = "us-east-1"
# Local mode only checks that a role looks like an ARN; nothing assumes it.
LOCAL_ROLE = "arn:aws:iam::000000000000:role/imgclf-local"
LOCAL_INSTANCE_TYPES = {False: "local", True: "local_gpu"}  # local_gpu: the host's GPUs, one instance
ROLE_ENV = "SAGEMAKER_ROLE"
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


@dataclass(frozen=True)
class Target:
    """A SageMaker session and the execution role its jobs run as."""

    session: sagemaker.Session
    role: str
    gpu: bool = False  # local mode: give the containers the host's GPUs

    @property
    def local(self) -> bool:
        return bool(getattr(self.session, "local_mode", False))

    def instance_type(self, requested: str) -> str:
        """Local mode runs every instance as a container on this machine."""
        return LOCAL_INSTANCE_TYPES[self.gpu] if self.local else requested


def local_target(container_root: Path | None = None, serving_port: int = LOCAL_SERVING_PORT, gpu: bool = False) -> Target:
    """Local mode: jobs and endpoints are Docker Compose services on this machine.

    `container_root` holds the SDK's per-job temporary folders (default: the system temp dir);
    `serving_port` is where a local endpoint listens; `gpu` passes the host's GPUs to the
    containers (the SDK allows one instance then).
    """
    boto_session = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local",
                                 region_name=LOCAL_REGION)
    session = LocalSession(boto_session=boto_session, sagemaker_config=SDK_CONFIG)
    root = Path(container_root or tempfile.gettempdir()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    session.config = {"local": {"local_code": True, "container_root": str(root), "serving_port": serving_port}}
    return Target(session, LOCAL_ROLE, gpu)


def aws_session(region: str | None = None) -> sagemaker.Session:
    """A SageMaker session on the user's AWS account, in `region` or the configuration's."""
    boto_session = boto3.Session(region_name=region)  # reads the configuration, calls nothing
    if not boto_session.region_name:
        raise UserError("no AWS region: give --region, set $AWS_REGION, or run `aws configure` (or use --local)")
    return sagemaker.Session(boto_session=boto_session, sagemaker_config=SDK_CONFIG)


def aws_target(region: str | None = None, role: str | None = None) -> Target:
    """A session on the user's AWS account; the role from the argument, $SAGEMAKER_ROLE, or the notebook's."""
    session = aws_session(region)
    role = role or os.environ.get(ROLE_ENV)
    if not role:
        try:
            role = sagemaker.get_execution_role(session)  # works inside SageMaker notebooks and Studio
        except ValueError as e:
            raise UserError(f"no execution role: give --role or set ${ROLE_ENV} ({e})") from e
    return Target(session, role)


def check_docker() -> None:
    """Local mode runs the image with Docker and docker-compose: both must be there, the engine up."""
    for tool in ("docker", "docker-compose"):
        if not shutil.which(tool):
            raise UserError(f"local mode needs {tool}: install it, or drop --local to run on SageMaker")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise UserError("local mode needs a running Docker engine (`docker info` fails): start it, or drop --local")


def target(local: bool, region: str | None = None, role: str | None = None, **local_options) -> Target:
    return local_target(**local_options) if local else aws_target(region, role)
