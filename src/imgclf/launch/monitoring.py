"""`imgclf monitor --processing`: the monitor as a SageMaker Processing job on this image, so that a
scheduler (EventBridge, a pipeline) can run it every hour. SageMaker copies the capture prefix, the
model archive and the ground truth into the container and uploads its output folder afterwards.
In local mode (`--local`) the same job runs in Docker on this machine, on folders of this machine."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..names import UserError
from .account import AccountSettings

if TYPE_CHECKING:  # the SDK is imported when the job starts, not when `imgclf --help` builds its parser
    from .session import Target

ROOT = "/opt/ml/processing"  # SageMaker's convention for a processing container's folders
PROGRAM = "imgclf-monitor"  # monitor/cli.py, installed with the package
INSTANCE_TYPE = "ml.m5.xlarge"
NO_SETTINGS = AccountSettings()
FLAGS = {"capture": "CAPTURE", "model": "--baseline", "ground_truth": "--ground-truth"}  # input name -> its flag


def _s3(name: str, uri: str | None) -> None:
    if uri is not None and not uri.startswith("s3://"):
        raise UserError(f"a processing job reads and writes S3: {name} {uri!r} is not an s3:// URI")


def _local(name: str, path: str | None) -> str | None:
    """A file:// URI of an existing path, as local mode takes inputs."""
    from .datasets import local_uri

    if path is not None and not Path(path.removeprefix("file://")).exists():
        raise UserError(f"no {path} on this machine: give {name} a folder or file here (local mode)")
    return None if path is None else local_uri(path)


def _is_file(uri: str) -> bool:
    """Whether the input is one file, which lands under its own name in its folder (else a prefix or
    folder whose contents land there)."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://")).is_file()
    return uri.endswith(".tar.gz")


def processing_job(target: Target, image_uri: str, capture: str, model: str, output: str, *,
                   ground_truth: str | None = None, fail_on_drift: bool = False,
                   instance_type: str = INSTANCE_TYPE, account: AccountSettings = NO_SETTINGS,
                   wait: bool = True) -> str:
    """Start (and with `wait`, follow) the monitoring job; its name. On SageMaker every location is in
    S3 and `model` is the model.tar.gz; in local mode they are paths here (the model its folder or
    archive) and the job runs now, its output copied to `output`."""
    from sagemaker.processing import ProcessingInput, ProcessingOutput
    from sagemaker.utils import name_from_base

    sources = {"capture": capture, "model": model, "ground_truth": ground_truth}
    if target.local:
        sources = {name: _local(FLAGS[name], uri) for name, uri in sources.items()}
        destination = _local_output(output)
    else:
        for name, uri in sources.items():
            _s3(FLAGS[name], uri)
        _s3("--output", output)
        if not model.endswith(".tar.gz"):
            raise UserError(f"--baseline {model}: give the model.tar.gz in S3 that training wrote")
        destination = output
    inputs, paths = [], {}
    for name, uri in sources.items():
        if uri is not None:
            folder = f"{ROOT}/input/{name}"
            inputs.append(ProcessingInput(source=uri, destination=folder, input_name=name))
            paths[name] = f"{folder}/{uri.rsplit('/', 1)[-1]}" if _is_file(uri) else folder
    arguments = [paths["capture"], "--baseline", paths["model"], "--output", f"{ROOT}/output"]
    if ground_truth:
        arguments += ["--ground-truth", paths["ground_truth"]]
    if fail_on_drift:
        arguments.append("--fail-on-drift")
    processor = _processor(target, image_uri=image_uri, instance_count=1,
                           instance_type=target.instance_type(instance_type), entrypoint=[PROGRAM],
                           tags=account.sdk_tags, volume_kms_key=account.volume_kms_key,
                           output_kms_key=account.output_kms_key, base_job_name="imgclf-monitor")
    job_name = name_from_base("imgclf-monitor")
    try:
        # local mode streams the container's output itself; logs=True would ask CloudWatch for it
        processor.run(inputs=inputs, outputs=[ProcessingOutput(source=f"{ROOT}/output", destination=destination,
                                                               output_name="monitoring")],
                      arguments=arguments, wait=wait, logs=wait and not target.local, job_name=job_name)
    except RuntimeError as e:  # local mode: the container exited with an error; its output was copied all the same
        if not (target.local and fail_on_drift and local_drift(output)):
            raise UserError(f"processing job {job_name} failed: its log is above") from e
    return job_name


def _local_output(output: str) -> str:
    from .datasets import local_uri

    if output.startswith("s3://"):
        raise UserError(f"--output {output}: local mode writes to a folder here, not to S3")
    return local_uri(output)


def local_drift(output: str) -> bool:
    """The verdict of a local job, from the statistics it wrote under `output` (a folder here)."""
    from ..monitor.analysis import STATISTICS_FILE

    statistics = Path(output.removeprefix("file://")) / STATISTICS_FILE
    return statistics.is_file() and json.loads(statistics.read_text())["drift"] is True


def _processor(target: Target, **kwargs):
    """The SDK's Processor; in local mode one that leaves file:// inputs and output where they are (the
    SDK's own uploads them to the session's S3 bucket first: sagemaker-python-sdk#2484)."""
    from sagemaker.processing import Processor

    class InPlace(Processor):
        def _normalize_inputs(self, inputs=None, kms_key=None):
            return list(inputs or [])

        def _normalize_outputs(self, outputs=None):
            return list(outputs or [])

    return (InPlace if target.local else Processor)(role=target.role, sagemaker_session=target.session, **kwargs)
