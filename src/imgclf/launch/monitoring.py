"""`imgclf monitor --processing`: the monitor as a SageMaker Processing job on this image, so that a
scheduler (EventBridge, a pipeline) can run it every hour. SageMaker copies the capture prefix, the
model archive and the ground truth into the container and uploads its output folder afterwards."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..names import UserError
from .account import AccountSettings

if TYPE_CHECKING:  # the SDK is imported when the job starts, not when `imgclf --help` builds its parser
    from .session import Target

ROOT = "/opt/ml/processing"  # SageMaker's convention for a processing container's folders
PROGRAM = "imgclf-monitor"  # monitor/cli.py, installed with the package
INSTANCE_TYPE = "ml.m5.xlarge"


def _s3(name: str, uri: str | None) -> None:
    if uri is not None and not uri.startswith("s3://"):
        raise UserError(f"a processing job reads and writes S3: {name} {uri!r} is not an s3:// URI")


def processing_job(target: Target, image_uri: str, capture: str, model: str, output: str, *,
                   ground_truth: str | None = None, fail_on_drift: bool = False,
                   instance_type: str = INSTANCE_TYPE, account: AccountSettings = AccountSettings(),
                   wait: bool = True) -> str:
    """Start (and with `wait`, follow) the monitoring job; its name. `model` is a model.tar.gz in S3."""
    from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor
    from sagemaker.utils import name_from_base

    for name, uri in (("CAPTURE", capture), ("--baseline", model), ("--output", output),
                      ("--ground-truth", ground_truth)):
        _s3(name, uri)
    if not model.endswith(".tar.gz"):
        raise UserError(f"--baseline {model}: give the model.tar.gz in S3 that training wrote")
    if target.local:
        raise UserError("--processing runs on SageMaker: leave out --local (or run the monitor here without it)")
    inputs = [ProcessingInput(source=capture, destination=f"{ROOT}/input/capture", input_name="capture"),
              ProcessingInput(source=model, destination=f"{ROOT}/input/model", input_name="model")]
    arguments = [f"{ROOT}/input/capture", "--baseline", f"{ROOT}/input/model/{model.rsplit('/', 1)[-1]}",
                 "--output", f"{ROOT}/output"]
    if ground_truth:
        inputs.append(ProcessingInput(source=ground_truth, destination=f"{ROOT}/input/ground_truth",
                                      input_name="ground_truth"))
        arguments += ["--ground-truth", f"{ROOT}/input/ground_truth"]
    if fail_on_drift:
        arguments.append("--fail-on-drift")
    processor = Processor(role=target.role, image_uri=image_uri, instance_count=1, instance_type=instance_type,
                          entrypoint=[PROGRAM], sagemaker_session=target.session, tags=account.sdk_tags,
                          volume_kms_key=account.volume_kms_key, output_kms_key=account.output_kms_key,
                          base_job_name="imgclf-monitor")
    job_name = name_from_base("imgclf-monitor")
    processor.run(inputs=inputs, outputs=[ProcessingOutput(source=f"{ROOT}/output", destination=output,
                                                           output_name="monitoring")],
                  arguments=arguments, wait=wait, logs=wait, job_name=job_name)
    return job_name
