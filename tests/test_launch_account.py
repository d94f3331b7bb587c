"""The launcher's flags for locked-down accounts (launch/account.py), deploy's autoscaling and data
capture, against moto's server on 127.0.0.1 (AWS_ENDPOINT_URL): each command line runs as a user
runs it, and the request fields are read back from the server. Where moto keeps no such field, the
request the SDK sent is what the test reads (the `sent` fixture)."""
from __future__ import annotations

import boto3
import pytest
from conftest import free_port
from moto.server import ThreadedMotoServer

from imgclf.launch import account, cli, scaling, session
from imgclf.names import UserError

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/imgclf:latest"
ROLE = "arn:aws:iam::123456789012:role/sagemaker"
VOLUME_KEY = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
OUTPUT_KEY = "alias/imgclf-output"
SUBNETS = ["subnet-0a1b2c3d4e5f60718", "subnet-0f1e2d3c4b5a69788"]
SECURITY_GROUPS = ["sg-0123456789abcdef0"]
TAGS = [{"Key": "team", "Value": "vision"}, {"Key": "cost-center", "Value": "4711"}]
ACCOUNT_FLAGS = ["--subnets", ",".join(SUBNETS), "--security-group-ids", ",".join(SECURITY_GROUPS),
                 "--network-isolation", "--volume-kms-key", VOLUME_KEY, "--output-kms-key", OUTPUT_KEY,
                 "--tags", "team=vision,cost-center=4711"]
AWS = ["--image-uri", IMAGE, "--role", ROLE, "--region", "us-east-1"]


@pytest.fixture
def moto_server(monkeypatch):
    """moto's server on a free port of 127.0.0.1, the AWS endpoint of every client (AWS_ENDPOINT_URL)."""
    for var in list(__import__("os").environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("SAGEMAKER_SUPPRESS_V2_WARNING", raising=False)  # restored after cli.main sets it
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def sent(moto_server, monkeypatch):
    """The parameters of every request that the commands' clients send, by operation name."""
    requests: dict[str, list[dict]] = {}

    def record(params, model, **_):
        requests.setdefault(model.name, []).append(params)

    make_target = session.target

    def recording_target(*args, **kwargs):
        target = make_target(*args, **kwargs)
        # clients made later (application-autoscaling) take the session's handlers
        target.session.boto_session.events.register("provide-client-params.*.*", record)
        target.session.sagemaker_client.meta.events.register("provide-client-params.sagemaker.*", record)
        return target

    monkeypatch.setattr(session, "target", recording_target)
    return requests


def client(service: str):
    return boto3.client(service, region_name="us-east-1")


# ---------------------------------------------------------------------------------------------
# training and tuning jobs


def test_training_job_with_every_account_flag(sent, capsys):
    cli.main(["train", *AWS, "--training", "s3://data/dogs/train", "--output-path", "s3://out/jobs", "--epochs", "1",
              "--no-wait", *ACCOUNT_FLAGS, "--keep-alive-seconds", "1800"])
    name = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    job = client("sagemaker").describe_training_job(TrainingJobName=name)
    assert job["VpcConfig"] == {"Subnets": SUBNETS, "SecurityGroupIds": SECURITY_GROUPS}
    assert job["EnableNetworkIsolation"] is True
    assert job["ResourceConfig"]["VolumeKmsKeyId"] == VOLUME_KEY
    assert job["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800
    assert job["OutputDataConfig"] == {"S3OutputPath": "s3://out/jobs", "KmsKeyId": OUTPUT_KEY}
    assert client("sagemaker").list_tags(ResourceArn=job["TrainingJobArn"])["Tags"] == TAGS
    (request,) = sent["CreateTrainingJob"]
    assert request["Tags"] == TAGS


def test_features_job_takes_a_warm_pool(sent, capsys):
    cli.main(["features", *AWS, "--training", "s3://data/dogs/train", "--output-path", "s3://out/f", "--no-wait",
              "--keep-alive-seconds", "600", "--tags", "team=vision"])
    (request,) = sent["CreateTrainingJob"]
    job = client("sagemaker").describe_training_job(TrainingJobName=request["TrainingJobName"])
    assert job["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 600
    assert job["HyperParameters"]["extract-features"] == "true"
    assert "VpcConfig" not in request and "EnableNetworkIsolation" not in request


def test_tuning_job_trials_run_in_the_account(sent, capsys):
    cli.main(["tune", *AWS, "--training", "s3://data/dogs/train", "--output-path", "s3://out/jobs", "--epochs", "2",
              "--max-jobs", "4", "--no-wait", *ACCOUNT_FLAGS])
    (request,) = sent["CreateHyperParameterTuningJob"]
    name = request["HyperParameterTuningJobName"]
    definition = client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name)["TrainingJobDefinition"]
    assert definition["VpcConfig"] == {"Subnets": SUBNETS, "SecurityGroupIds": SECURITY_GROUPS}
    assert definition["EnableNetworkIsolation"] is True
    assert definition["OutputDataConfig"]["KmsKeyId"] == OUTPUT_KEY
    assert definition["HyperParameterTuningResourceConfig"]["VolumeKmsKeyId"] == VOLUME_KEY
    assert request["Tags"] == TAGS  # the tuning job's own, and its trials' (SageMaker propagates them)


# ---------------------------------------------------------------------------------------------
# endpoints and transform jobs


def test_endpoint_with_every_flag_and_its_deletion(sent, capsys):
    cli.main(["deploy", *AWS, "--model-data", "s3://out/model.tar.gz", "--endpoint-name", "locked",
              "--instance-count", "2", "--autoscale", "2:6", "--target-invocations", "300",
              "--data-capture", "s3://out/capture", "--capture-percent", "50", *ACCOUNT_FLAGS])
    sm = client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName="locked")
    assert config["KmsKeyId"] == VOLUME_KEY
    assert config["DataCaptureConfig"] == {
        "EnableCapture": True, "InitialSamplingPercentage": 50, "DestinationS3Uri": "s3://out/capture",
        "KmsKeyId": OUTPUT_KEY, "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]}}
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["VpcConfig"] == {"Subnets": SUBNETS, "SecurityGroupIds": SECURITY_GROUPS}
    (create_model,) = sent["CreateModel"]
    assert create_model["EnableNetworkIsolation"] is True  # moto answers False whatever was sent
    endpoint = sm.describe_endpoint(EndpointName="locked")
    for arn in (model["ModelArn"], config["EndpointConfigArn"], endpoint["EndpointArn"]):
        assert sm.list_tags(ResourceArn=arn)["Tags"] == TAGS

    autoscaling = client("application-autoscaling")
    (target,) = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["ScalableDimension"], target["MinCapacity"], target["MaxCapacity"]) == (
        "endpoint/locked/variant/AllTraffic", "sagemaker:variant:DesiredInstanceCount", 2, 6)
    (policy,) = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 300.0, "PredefinedMetricSpecification": {"PredefinedMetricType": scaling.METRIC},
        "ScaleOutCooldown": scaling.SCALE_OUT_COOLDOWN_S, "ScaleInCooldown": scaling.SCALE_IN_COOLDOWN_S}
    assert "autoscaling: 2 to 6 instances, 300 invocations" in capsys.readouterr().out

    cli.main(["delete", "--region", "us-east-1", "--role", ROLE, "locked"])
    assert "'scaling_policy': ['locked-AllTraffic-invocations']" in capsys.readouterr().out
    assert autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []


def test_async_answers_are_encrypted_with_the_output_key(sent, capsys):
    cli.main(["deploy", *AWS, "--model-data", "s3://out/model.tar.gz", "--endpoint-name", "async",
              "--async", "s3://out/async", "--output-kms-key", OUTPUT_KEY])
    config = client("sagemaker").describe_endpoint_config(EndpointConfigName="async")
    assert config["AsyncInferenceConfig"]["OutputConfig"]["KmsKeyId"] == OUTPUT_KEY
    assert "DataCaptureConfig" not in sent["CreateEndpointConfig"][0]


def test_transform_job_in_the_account(sent, capsys):
    cli.main(["transform", *AWS, "--model-data", "s3://out/model.tar.gz", "--data", "s3://data/images",
              "--output-path", "s3://out/p", "--no-wait", *ACCOUNT_FLAGS])
    sm = client("sagemaker")
    (summary,) = sm.list_transform_jobs()["TransformJobSummaries"]
    job = sm.describe_transform_job(TransformJobName=summary["TransformJobName"])
    assert job["TransformResources"]["VolumeKmsKeyId"] == VOLUME_KEY
    assert job["TransformOutput"]["KmsKeyId"] == OUTPUT_KEY
    (request,) = sent["CreateTransformJob"]
    assert request["Tags"] == TAGS
    (create_model,) = sent["CreateModel"]
    assert create_model["VpcConfig"] == {"Subnets": SUBNETS, "SecurityGroupIds": SECURITY_GROUPS}
    assert create_model["EnableNetworkIsolation"] is True


# ---------------------------------------------------------------------------------------------
# bad values: one line, before any AWS call


@pytest.mark.parametrize("flags, message", [
    (["train", "--tags", "team"], "--tags: 'team' is not KEY=VALUE"),
    (["train", "--tags", "aws:owner=me"], "the aws: prefix is AWS's own"),
    (["train", "--tags", "a=1,a=2"], "'a' is given twice"),
    (["train", "--subnets", "subnet-0a1"], "a VPC takes both --subnets and --security-group-ids"),
    (["train", "--subnets", "vpc-1", "--security-group-ids", "sg-1"], "'vpc-1' is not an ID like subnet-"),
    (["train", "--keep-alive-seconds", "7200"], "0 to 3600 s"),
    (["train", "--keep-alive-seconds", "60", "--spot"], "no warm pool for spot jobs"),
    (["train", "--local", "--network-isolation"], "--network-isolation needs SageMaker: leave it out"),
    (["deploy", "--autoscale", "4"], "give MIN:MAX instances"),
    (["deploy", "--autoscale", "2:4"], "--autoscale needs --target-invocations"),
    (["deploy", "--autoscale", "2:4", "--target-invocations", "100"], "--instance-count 1 is outside --autoscale 2:4"),
    (["deploy", "--target-invocations", "100"], "give both"),
    (["deploy", "--data-capture", "/tmp/capture"], "give an s3:// prefix"),
    (["deploy", "--data-capture", "s3://b/c", "--capture-percent", "0"], "give 1 to 100"),
    (["deploy", "--output-kms-key", OUTPUT_KEY], "give one of them"),
    (["deploy", "--serverless-memory", "2048", "--network-isolation"],
     "serverless endpoints take no --network-isolation"),
    (["transform", "--data", "s3://d", "--tags", "=x"], "is not KEY=VALUE"),
])
def test_bad_values_are_one_line_before_any_aws_call(monkeypatch, capsys, flags, message):
    """AWS_ENDPOINT_URL points where nothing listens: a request would fail with a connection error,
    not this one-line message."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("SAGEMAKER_SUPPRESS_V2_WARNING", raising=False)
    serving = flags[0] in ("deploy", "transform")
    model = ["--model-data", "s3://out/model.tar.gz"] if serving else ["--training", "s3://d/t"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*flags, *AWS, *model])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_settings_without_flags_add_nothing_to_the_requests():
    assert account.AccountSettings().estimator_kwargs() == {}
    assert account.AccountSettings().model_kwargs() == {"vpc_config": None, "enable_network_isolation": False}
    assert account.parse_tags(" team = vision ,x=") == (("team", "vision"), ("x", ""))
    with pytest.raises(UserError, match="up to 50"):
        account.parse_tags(",".join(f"k{i}=v" for i in range(51)))
