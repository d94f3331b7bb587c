"""The SageMaker Model Registry: a trained model as a versioned model package, and an endpoint from one.

A package holds what deploying needs, the inference specification (this image, the model.tar.gz,
the content types the server takes and answers, the instance types it runs on), and, as
ModelMetrics' model quality statistics, the evaluation that training wrote (evaluation.json,
train/evaluation.py). evaluation.json travels inside model.tar.gz: registering copies it beside
the archive in S3, where the package points, so Studio shows its figures.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from ..artifact.archive import read_members
from ..artifact.baseline import EVALUATION_FILE
from ..names import CARD_FILE, UserError
from ..serve.profiles import PROFILE_ENV
from .account import AccountSettings
from .options import INSTANCE_COUNT, SERVING_INSTANCE_TYPE

if TYPE_CHECKING:  # the SDK is imported when a command runs, not when `imgclf --help` builds its parser
    from .session import Target

log = logging.getLogger("imgclf.launch")

APPROVALS = ("PendingManualApproval", "Approved")  # what `imgclf register --approval` may set
DEFAULT_APPROVAL = "PendingManualApproval"
# what the server takes and answers (docs/serving.md, HTTP API)
CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image", "application/json", "application/x-npy")
RESPONSE_TYPES = ("application/json", "application/json;verbose")
# where the image serves well: CPU instances (the OpenVINO copies) and single-GPU ones
INSTANCE_TYPES = ("ml.m5.large", "ml.m5.xlarge", "ml.c5.xlarge", "ml.c5.2xlarge", "ml.c6i.xlarge",
                  "ml.g4dn.xlarge", "ml.g5.xlarge")
DOMAIN, TASK = "COMPUTER_VISION", "IMAGE_CLASSIFICATION"


@dataclass(frozen=True)
class Registered:
    arn: str
    group: str
    evaluation_uri: str | None  # where ModelMetrics points; None for a model trained without an evaluation


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise UserError(f"{uri!r} is not an s3:// URI: the registry keeps models that are in S3")
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def read_archive_members(s3, model_data: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named top-level files of a model.tar.gz in S3, read as the archive streams in."""
    bucket, key = split_s3(model_data)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as e:
        raise UserError(f"cannot read {model_data}: {e}") from e
    return read_members(body, names)


def ensure_group(client, group: str, tags: list[dict] | None) -> None:
    """Create the model package group unless it exists."""
    try:
        client.describe_model_package_group(ModelPackageGroupName=group)
        return
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("ValidationException", "ResourceNotFound"):
            raise
    client.create_model_package_group(ModelPackageGroupName=group, ModelPackageGroupDescription=(
        "image classifiers of the imgclf image"), **({"Tags": tags} if tags else {}))
    log.info("created model package group %s", group)


def package_request(group: str, image_uri: str, model_data: str, approval: str, *,
                    evaluation_uri: str | None = None, instance_types: tuple[str, ...] = INSTANCE_TYPES,
                    metadata: dict[str, str] | None = None, description: str | None = None,
                    tags: list[dict] | None = None) -> dict:
    """CreateModelPackage's parameters."""
    if approval not in APPROVALS:
        raise UserError(f"approval {approval!r}: choose {' or '.join(APPROVALS)}")
    request = {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": description or f"{model_data}",
        "InferenceSpecification": {
            "Containers": [{"Image": image_uri, "ModelDataUrl": model_data}],
            "SupportedContentTypes": list(CONTENT_TYPES),
            "SupportedResponseMIMETypes": list(RESPONSE_TYPES),
            "SupportedRealtimeInferenceInstanceTypes": list(instance_types),
            "SupportedTransformInstanceTypes": list(instance_types),
        },
        "ModelApprovalStatus": approval,
        "Domain": DOMAIN,
        "Task": TASK,
    }
    if evaluation_uri:
        request["ModelMetrics"] = {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                                   "S3Uri": evaluation_uri}}}
    if metadata:
        request["CustomerMetadataProperties"] = metadata
    if tags:
        request["Tags"] = tags
    return request


def card_metadata(card_json: bytes | None, evaluation: dict | None) -> dict[str, str]:
    """CustomerMetadataProperties: what the model is and how it scored, in a few strings."""
    out = {}
    if card_json:
        card = json.loads(card_json)
        out.update(arch=str(card.get("arch", "")), classes=str(len(card.get("classes", []))))
    if evaluation:
        out["evaluation_split"] = str(evaluation.get("split", ""))
        for name in ("accuracy", "weighted_f1"):
            value = evaluation["multiclass_classification_metrics"].get(name, {}).get("value")
            if value is not None:
                out[f"evaluation_{name}"] = f"{value:.4f}"
    return out


def register(target: Target, model_data: str, group: str, image_uri: str, *, approval: str = DEFAULT_APPROVAL,
             instance_types: tuple[str, ...] = INSTANCE_TYPES, description: str | None = None,
             account: AccountSettings = AccountSettings()) -> Registered:
    """A new version of `group` (created if missing) for the model.tar.gz at `model_data`."""
    if target.local:
        raise UserError("the model registry is SageMaker's: leave out --local")
    if approval not in APPROVALS:
        raise UserError(f"approval {approval!r}: choose {' or '.join(APPROVALS)}")
    s3 = target.session.boto_session.client("s3")
    members = read_archive_members(s3, model_data, (EVALUATION_FILE, CARD_FILE))
    evaluation_uri = None
    evaluation = json.loads(members[EVALUATION_FILE]) if EVALUATION_FILE in members else None
    if evaluation is not None:
        bucket, key = split_s3(model_data)
        metrics_key = key.rpartition("/")[0] + "/" + EVALUATION_FILE if "/" in key else EVALUATION_FILE
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": account.output_kms_key} \
            if account.output_kms_key else {}
        s3.upload_fileobj(io.BytesIO(members[EVALUATION_FILE]), bucket, metrics_key,
                          ExtraArgs={"ContentType": "application/json", **extra})
        evaluation_uri = f"s3://{bucket}/{metrics_key}"
    else:
        log.warning("%s has no %s (trained before evaluations existed): the package has no model metrics",
                    model_data, EVALUATION_FILE)
    client = target.session.sagemaker_client
    ensure_group(client, group, account.sdk_tags)
    request = package_request(group, image_uri, model_data, approval, evaluation_uri=evaluation_uri,
                              instance_types=instance_types, metadata=card_metadata(members.get(CARD_FILE), evaluation),
                              description=description, tags=account.sdk_tags)
    arn = client.create_model_package(**request)["ModelPackageArn"]
    return Registered(arn, group, evaluation_uri)


def training_job_model(target: Target, name: str) -> tuple[str, str]:
    """(model.tar.gz URI, training image) of a finished training job."""
    job = target.session.sagemaker_client.describe_training_job(TrainingJobName=name)
    artifacts = job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if not artifacts:
        raise UserError(f"training job {name} has no model artifact (status {job.get('TrainingJobStatus')})")
    return artifacts, job["AlgorithmSpecification"].get("TrainingImage", "")


def deploy_package(target: Target, package_arn: str, *, instance_type: str = SERVING_INSTANCE_TYPE,
                   instance_count: int = INSTANCE_COUNT, endpoint_name: str | None = None,
                   account: AccountSettings = AccountSettings(), async_inference=None, data_capture=None,
                   wait: bool = True):
    """An endpoint for an approved model package (SageMaker refuses the others); its Predictor."""
    from sagemaker.model import ModelPackage
    from sagemaker.utils import name_from_base

    from .hosting import BASE_NAME, predictor

    if target.local:
        raise UserError("model packages live in SageMaker's registry: leave out --local")
    package = target.session.sagemaker_client.describe_model_package(ModelPackageName=package_arn)
    if package.get("ModelApprovalStatus") != "Approved":
        raise UserError(f"{package_arn} is {package.get('ModelApprovalStatus')}: approve it first (Studio, or "
                        f"`aws sagemaker update-model-package --model-package-arn {package_arn} "
                        "--model-approval-status Approved`)")
    endpoint_name = endpoint_name or name_from_base(BASE_NAME)
    profile = "async" if async_inference is not None else "real-time"
    model = ModelPackage(role=target.role, model_package_arn=package_arn, sagemaker_session=target.session,
                         name=endpoint_name, env={PROFILE_ENV: profile}, **account.model_kwargs())
    model.deploy(initial_instance_count=instance_count, instance_type=instance_type, endpoint_name=endpoint_name,
                 async_inference_config=async_inference, tags=account.sdk_tags, kms_key=account.volume_kms_key,
                 data_capture_config=data_capture, wait=wait)
    return predictor(target, endpoint_name)
