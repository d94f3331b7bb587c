"""Hosting: deploy a trained model on the image, invoke it with image files, delete it, batch transform.

One artifact can be served four ways: a real-time endpoint (instance type and count), a
serverless endpoint (memory and concurrency, no instance to manage), an asynchronous endpoint
(requests and answers in S3, payloads up to 1 GB), or a multi-model endpoint that loads any
model.tar.gz under an S3 prefix on first use (`X-Amzn-SageMaker-Target-Model`). Each endpoint tells
the container its serving profile (serve/profiles.py), which sets its payload limit and timeout.
The account's settings (account.py) go on every model, endpoint and transform job; an endpoint can
capture its traffic to S3 and scale with Application Auto Scaling (scaling.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from sagemaker.async_inference import AsyncInferenceConfig
from sagemaker.deserializers import JSONDeserializer
from sagemaker.model import Model
from sagemaker.model_monitor import DataCaptureConfig
from sagemaker.multidatamodel import MultiDataModel
from sagemaker.predictor import Predictor
from sagemaker.serializers import IdentitySerializer
from sagemaker.serverless import ServerlessInferenceConfig
from sagemaker.utils import name_from_base

from ..names import UserError
from ..serve.profiles import PROFILE_ENV, PROFILES
from . import scaling
from .account import AccountSettings
from .hosting_flags import TRANSFORM_ACCEPTS
from .options import INSTANCE_COUNT, SERVING_INSTANCE_TYPE
from .session import Target

BASE_NAME = "imgclf"
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
ANY_IMAGE = "application/x-image"  # the server sniffs the format
MAX_PAYLOAD_MB = 100  # CreateTransformJob's MaxPayloadInMB
JSON_CONTENT_TYPES = ["application/json"]  # the server's answers: captured as JSON, readable as they are
NO_SETTINGS = AccountSettings()


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(Path(path).suffix.lower(), ANY_IMAGE)


def model(target: Target, image_uri: str, model_data: str, name: str | None = None,
          env: dict[str, str] | None = None, account: AccountSettings = NO_SETTINGS) -> Model:
    return Model(image_uri=image_uri, model_data=model_data, role=target.role, name=name, env=env,
                 sagemaker_session=target.session, **account.model_kwargs())


def async_config(output_path: str, max_concurrency: int | None = None,
                 kms_key: str | None = None) -> AsyncInferenceConfig:
    """Asynchronous inference: requests read from S3, answers written under `output_path`."""
    if not output_path.startswith("s3://"):
        raise UserError(f"asynchronous endpoints write their answers to S3: {output_path!r} is not an s3:// path")
    return AsyncInferenceConfig(output_path=output_path.rstrip("/"), failure_path=output_path.rstrip("/") + "/failures",
                                max_concurrent_invocations_per_instance=max_concurrency, kms_key_id=kms_key)


def data_capture_config(target: Target, destination: str, percent: int,
                        kms_key: str | None = None) -> DataCaptureConfig:
    """Requests and answers captured under `destination`; the JSON answers kept as JSON, the images base64."""
    return DataCaptureConfig(enable_capture=True, sampling_percentage=percent, destination_s3_uri=destination,
                             kms_key_id=kms_key, json_content_types=JSON_CONTENT_TYPES,
                             sagemaker_session=target.session)


def serverless_config(memory_mb: int, max_concurrency: int) -> ServerlessInferenceConfig:
    """Serverless memory comes in 1 GB steps from 1024 to 6144 MB."""
    if memory_mb not in range(1024, 6145, 1024):
        raise UserError(f"serverless memory {memory_mb} MB: choose 1024, 2048, 3072, 4096, 5120 or 6144")
    return ServerlessInferenceConfig(memory_size_in_mb=memory_mb, max_concurrency=max_concurrency)


def deploy(target: Target, image_uri: str, model_data: str, *, instance_type: str = SERVING_INSTANCE_TYPE,
           instance_count: int = INSTANCE_COUNT, endpoint_name: str | None = None,
           serverless: ServerlessInferenceConfig | None = None, async_inference: AsyncInferenceConfig | None = None,
           env: dict[str, str] | None = None, account: AccountSettings = NO_SETTINGS,
           data_capture: DataCaptureConfig | None = None, wait: bool = True) -> Predictor:
    """A real-time endpoint (a serverless one with `serverless`, an asynchronous one with
    `async_inference`) for one model artifact, in the account's VPC, keys and tags (`account`),
    capturing its traffic with `data_capture`.

    With `wait`, returns once the endpoint is in service (minutes on SageMaker)."""
    if serverless is not None and async_inference is not None:
        raise UserError("an endpoint is either serverless or asynchronous, not both")
    if (serverless or async_inference) is not None and target.local:
        raise UserError("serverless and asynchronous endpoints need SageMaker: leave those options out in local mode")
    endpoint_name = endpoint_name or name_from_base(BASE_NAME)
    profile = "serverless" if serverless is not None else "async" if async_inference is not None else "real-time"
    m = model(target, image_uri, model_data, name=endpoint_name, env={PROFILE_ENV: profile, **(env or {})},
              account=account)
    if serverless is not None:
        m.deploy(endpoint_name=endpoint_name, serverless_inference_config=serverless, tags=account.sdk_tags,
                 wait=wait)
    else:
        m.deploy(initial_instance_count=instance_count, instance_type=target.instance_type(instance_type),
                 endpoint_name=endpoint_name, async_inference_config=async_inference, tags=account.sdk_tags,
                 kms_key=account.volume_kms_key, data_capture_config=data_capture, wait=wait)
    return predictor(target, endpoint_name)


def deploy_multi_model(target: Target, image_uri: str, model_data_prefix: str, *,
                       instance_type: str = SERVING_INSTANCE_TYPE, instance_count: int = INSTANCE_COUNT,
                       endpoint_name: str | None = None, env: dict[str, str] | None = None,
                       account: AccountSettings = NO_SETTINGS, data_capture: DataCaptureConfig | None = None,
                       wait: bool = True) -> Predictor:
    """A multi-model endpoint over every model.tar.gz under `model_data_prefix` (an S3 prefix)."""
    if target.local:
        raise UserError("multi-model endpoints load models from S3: they need SageMaker, not local mode")
    endpoint_name = endpoint_name or name_from_base(BASE_NAME + "-mme")
    mdm = MultiDataModel(name=endpoint_name, model_data_prefix=model_data_prefix, image_uri=image_uri,
                         role=target.role, env=env, sagemaker_session=target.session, **account.model_kwargs())
    mdm.deploy(initial_instance_count=instance_count, instance_type=instance_type, endpoint_name=endpoint_name,
               tags=account.sdk_tags, kms_key=account.volume_kms_key, data_capture_config=data_capture, wait=wait)
    return predictor(target, endpoint_name)


def predictor(target: Target, endpoint_name: str) -> Predictor:
    """A client of an existing endpoint that sends image bytes and reads JSON back."""
    return Predictor(endpoint_name, sagemaker_session=target.session,
                     serializer=IdentitySerializer(ANY_IMAGE), deserializer=JSONDeserializer())


def invoke(pred: Predictor, image: Path, *, top_k: int = 3, target_model: str | None = None):
    """The endpoint's JSON answer for one image file: its top-k classes and probabilities."""
    data = Path(image).read_bytes()
    pred.serializer = IdentitySerializer(content_type(image))
    return pred.predict(data, custom_attributes=f"top_k={top_k}", target_model=target_model)


def autoscale(target: Target, endpoint_name: str, autoscaling: scaling.Autoscaling) -> list[str]:
    """Scale every variant of an endpoint (once it is in service, as Application Auto Scaling
    requires); the names of the scaling policies."""
    target.session.wait_for_endpoint(endpoint_name)
    variants = _variants(target, endpoint_name)[1]
    return scaling.enable(_autoscaling_client(target), endpoint_name, [v["VariantName"] for v in variants],
                          autoscaling)


def delete(target: Target, endpoint_name: str) -> dict[str, list[str]]:
    """Delete the endpoint's scaling policies and targets, the endpoint, its endpoint config and its
    models; returns what was deleted."""
    client = target.session.sagemaker_client
    config_name, variants = _variants(target, endpoint_name)
    models = sorted({v["ModelName"] for v in variants})
    scaled = {} if target.local else scaling.remove(_autoscaling_client(target), endpoint_name,
                                                    [v["VariantName"] for v in variants])
    client.delete_endpoint(EndpointName=endpoint_name)
    client.delete_endpoint_config(EndpointConfigName=config_name)
    for name in models:
        client.delete_model(ModelName=name)
    return {**scaled, "endpoint": [endpoint_name], "endpoint_config": [config_name], "model": models}


def _variants(target: Target, endpoint_name: str) -> tuple[str, list[dict]]:
    """The endpoint's config name and its production variants."""
    client = target.session.sagemaker_client
    config_name = client.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    return config_name, client.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]


def _autoscaling_client(target: Target):
    return target.session.boto_session.client("application-autoscaling")


def transform(target: Target, image_uri: str, model_data: str, data: str, output_path: str, *,
              instance_type: str = SERVING_INSTANCE_TYPE, instance_count: int = INSTANCE_COUNT,
              max_payload_mb: int | None = None, accept: str = TRANSFORM_ACCEPTS[0],
              account: AccountSettings = NO_SETTINGS, wait: bool = True) -> str:
    """Batch transform: one request per image under the `data` prefix, one `<image>.out` per answer.
    `max_payload_mb` (SageMaker's MaxPayloadInMB, up to 100; default 6) is the largest record;
    SageMaker passes it to the container, which takes records up to that size. `accept` is each
    request's Accept: `application/json;verbose` answers every class's probability (JumpStart's shape)."""
    if max_payload_mb is not None and not 0 <= max_payload_mb <= MAX_PAYLOAD_MB:
        raise UserError(f"max payload {max_payload_mb} MB: SageMaker takes 0 (no limit) to {MAX_PAYLOAD_MB} MB")
    m = model(target, image_uri, model_data, name=name_from_base(BASE_NAME + "-transform"), account=account)
    transformer = m.transformer(instance_count=instance_count, instance_type=target.instance_type(instance_type),
                                output_path=output_path, accept=accept, strategy="SingleRecord",
                                max_payload=max_payload_mb, volume_kms_key=account.volume_kms_key,
                                output_kms_key=account.output_kms_key, tags=account.sdk_tags)
    # the container's own timeout for a record (the batch profile's), not SageMaker's default 600 s
    client_config = {"InvocationsTimeoutInSeconds": PROFILES["batch"].response_timeout_s}
    # Local mode streams the container's output itself; logs=True would ask CloudWatch for it.
    transformer.transform(data, content_type=ANY_IMAGE, split_type=None, wait=wait, logs=wait and not target.local,
                          model_client_config=client_config)
    return transformer.output_path


def format_answer(answer) -> str:
    """One line per class with its probability when the answer has that shape, else the JSON."""
    rows = answer
    if isinstance(rows, dict):
        rows = rows.get("predictions", rows)
    if isinstance(rows, list) and len(rows) == 1 and isinstance(rows[0], list):
        rows = rows[0]
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        return "\n".join("  ".join(f"{k}={v}" for k, v in r.items()) for r in rows)
    return json.dumps(answer, indent=2)
