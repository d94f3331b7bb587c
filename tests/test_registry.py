"""`imgclf register` and `imgclf deploy --model-package` against moto: the model package group, the
package's inference specification and ModelMetrics, evaluation.json copied beside the archive."""
from __future__ import annotations

import io
import json
import tarfile

import boto3
import pytest
from test_launch import IMAGE, ROLE, aws, cli_env, sent  # noqa: F401 (fixtures)

from imgclf.launch import cli, options, registry
from imgclf.names import UserError

EVALUATION = {"multiclass_classification_metrics": {
    "confusion_matrix": {"cat": {"cat": 3, "dog": 1}, "dog": {"cat": 0, "dog": 4}},
    "accuracy": {"value": 0.875, "standard_deviation": 0.11},
    "weighted_f1": {"value": 0.874, "standard_deviation": 0.12}}, "split": "test", "images": 8}


def model_archive(evaluation: dict | None = EVALUATION) -> bytes:
    files = {"model.json": json.dumps({"arch": "resnet18", "classes": ["cat", "dog"]}).encode(), "model.pt": b"w"}
    if evaluation is not None:
        files["evaluation.json"] = json.dumps(evaluation).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def put(uri: str, data: bytes) -> None:
    bucket, key = registry.split_s3(uri)
    s3 = boto3.client("s3", region_name="us-east-1")
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def imgclf(*argv: str) -> None:
    cli.main([*argv, "--region", "us-east-1", "--role", ROLE])


@pytest.fixture
def launcher(aws, cli_env, monkeypatch):  # noqa: F811
    monkeypatch.setattr(options, "target", lambda args: aws)
    return aws


def test_register_then_deploy_from_the_package(launcher, sent, capsys):  # noqa: F811
    put("s3://models/job-1/output/model.tar.gz", model_archive())
    imgclf("register", "--model-data", "s3://models/job-1/output/model.tar.gz", "--group", "pets",
           "--image-uri", IMAGE, "--approval", "Approved", "--tags", "team=vision")
    out = capsys.readouterr().out
    arn = out.split("model package: ")[1].split()[0]
    assert arn.endswith(":model-package/pets/1")
    assert "model metrics: s3://models/job-1/output/evaluation.json" in out

    client = launcher.session.sagemaker_client
    package = client.describe_model_package(ModelPackageName=arn)
    spec = package["InferenceSpecification"]
    assert spec["Containers"] == [{"Image": IMAGE, "ModelDataUrl": "s3://models/job-1/output/model.tar.gz"}]
    assert "image/jpeg" in spec["SupportedContentTypes"]
    assert spec["SupportedResponseMIMETypes"] == ["application/json", "application/json;verbose"]
    assert "ml.m5.large" in spec["SupportedRealtimeInferenceInstanceTypes"]
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"] == {
        "ContentType": "application/json", "S3Uri": "s3://models/job-1/output/evaluation.json"}
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["CustomerMetadataProperties"] == {"arch": "resnet18", "classes": "2", "evaluation_split": "test",
                                                     "evaluation_accuracy": "0.8750",
                                                     "evaluation_weighted_f1": "0.8740"}
    copied = boto3.client("s3").get_object(Bucket="models", Key="job-1/output/evaluation.json")["Body"].read()
    assert json.loads(copied) == EVALUATION  # what the package's ModelMetrics point at
    (created,) = sent["CreateModelPackage"]  # moto keeps no tags: the request is checked
    assert created["Tags"] == [{"Key": "team", "Value": "vision"}]
    assert [g["ModelPackageGroupName"] for g in sent["CreateModelPackageGroup"]] == ["pets"]

    imgclf("deploy", "--model-package", arn, "--endpoint-name", "pets-live", "--instance-type", "ml.c5.xlarge")
    assert "endpoint: pets-live" in capsys.readouterr().out
    variant = client.describe_endpoint_config(EndpointConfigName="pets-live")["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.c5.xlarge"
    (model,) = sent["CreateModel"]
    assert model["ModelName"] == variant["ModelName"]
    (container,) = model["Containers"]  # as the SDK sends a package's model
    assert container["ModelPackageName"] == arn
    assert container["Environment"] == {"IMGCLF_SERVING_PROFILE": "real-time"}


def test_a_second_registration_is_the_next_version_of_the_same_group(launcher, sent, capsys):  # noqa: F811
    put("s3://models/a/model.tar.gz", model_archive())
    put("s3://models/b/model.tar.gz", model_archive(evaluation=None))
    imgclf("register", "--model-data", "s3://models/a/model.tar.gz", "--group", "pets", "--image-uri", IMAGE)
    imgclf("register", "--model-data", "s3://models/b/model.tar.gz", "--group", "pets", "--image-uri", IMAGE)
    out = capsys.readouterr().out
    assert ":model-package/pets/2 (PendingManualApproval)" in out
    assert "model metrics: none" in out  # an archive without evaluation.json: a package without metrics
    assert len(sent["CreateModelPackageGroup"]) == 1
    assert "ModelMetrics" not in sent["CreateModelPackage"][1]
    arn = out.split("model package: ")[1].split()[0]  # version 1, pending
    with pytest.raises(SystemExit):
        imgclf("deploy", "--model-package", arn)
    assert "is PendingManualApproval: approve it first" in capsys.readouterr().err


def test_register_a_training_jobs_model_with_its_image(launcher, capsys):
    client = launcher.session.sagemaker_client
    client.create_training_job(
        TrainingJobName="job-7", AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        RoleArn=ROLE, OutputDataConfig={"S3OutputPath": "s3://models/jobs"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 60})
    artifact = client.describe_training_job(TrainingJobName="job-7")["ModelArtifacts"]["S3ModelArtifacts"]
    put(artifact, model_archive())
    imgclf("register", "--training-job", "job-7", "--group", "pets")
    arn = capsys.readouterr().out.split("model package: ")[1].split()[0]
    container = client.describe_model_package(ModelPackageName=arn)["InferenceSpecification"]["Containers"][0]
    assert container == {"Image": IMAGE, "ModelDataUrl": artifact}


def test_bad_registrations_fail_before_aws_is_called(launcher, sent, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        imgclf("register", "--model-data", "s3://m/model.tar.gz", "--group", "g", "--approval", "Rejected")
    assert "invalid choice: 'Rejected'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        imgclf("register", "--model-data", "s3://m/model.tar.gz", "--group", "g", "--tags", "oops")
    assert "not KEY=VALUE" in capsys.readouterr().err
    assert not sent
    with pytest.raises(UserError, match="not an s3:// URI"):
        registry.split_s3("/tmp/model.tar.gz")
