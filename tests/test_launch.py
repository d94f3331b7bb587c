"""The launcher's pieces without Docker: SDK objects built from the package's contracts, the data
layout check and fetch, and the calls only AWS answers, against moto."""
from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile

import boto3
import pytest
from conftest import ROOT, make_image_folder
from moto import mock_aws

from imgclf.hpo import OBJECTIVE_METRIC, SEARCH_SPACE
from imgclf.launch import cli, datasets, hosting, options, session, training, tuning
from imgclf.names import UserError
from imgclf.train.metrics import metric_definitions
from imgclf.train.recipe import BEST_KNOWN

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/imgclf:latest"
ROLE = "arn:aws:iam::123456789012:role/sagemaker"
TINY = {"arch": "resnet18", "pretrained": False, "epochs": 1, "image-size": 32}


@pytest.fixture
def aws(monkeypatch):
    """A moto account: every AWS call of the test goes to it, none leaves the process."""
    for var in list(__import__("os").environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield session.aws_target(region="us-east-1", role=ROLE)


@pytest.fixture
def sent(aws):
    """The parameters of every SageMaker API request the test makes, by operation name.

    moto keeps only some fields of a request (it answers fixed metric definitions, for one), so
    the request itself is what these tests read, after moto accepted it."""
    requests: dict[str, list[dict]] = {}

    def record(params, model, **_):
        requests.setdefault(model.name, []).append(params)

    aws.session.sagemaker_client.meta.events.register("provide-client-params.sagemaker.*", record)
    return requests


@pytest.fixture
def local():
    return session.local_target()


# ---------------------------------------------------------------------------------------------
# sessions


def test_local_target_needs_no_aws_configuration(monkeypatch, tmp_path):
    monkeypatch.setattr("os.environ", {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    target = session.local_target(tmp_path, serving_port=8123)
    assert target.local and target.instance_type("ml.p3.2xlarge") == "local"
    assert target.session.boto_region_name == session.LOCAL_REGION
    assert target.session.config["local"] == {"local_code": True, "container_root": str(tmp_path.resolve()),
                                              "serving_port": 8123}
    assert target.session.sagemaker_config["SageMaker"]["PythonSDK"]["Modules"]["TelemetryOptOut"] is True
    assert session.local_target(tmp_path, gpu=True).instance_type("ml.g4dn.xlarge") == "local_gpu"


def test_aws_target_takes_role_from_environment(aws, monkeypatch):
    monkeypatch.setenv(session.ROLE_ENV, "arn:aws:iam::123456789012:role/from-env")
    target = session.aws_target(region="us-east-1")
    assert not target.local and target.role.endswith("from-env")
    assert target.instance_type("ml.g4dn.xlarge") == "ml.g4dn.xlarge"
    monkeypatch.delenv(session.ROLE_ENV)
    with pytest.raises(UserError, match="--role"):  # outside a SageMaker notebook there is no default role
        session.aws_target(region="us-east-1")


# ---------------------------------------------------------------------------------------------
# data


def test_check_layout_counts_splits(image_folders):
    splits = datasets.check_layout(image_folders)
    assert list(splits) == ["train", "valid", "test"]
    assert splits["train"].classes == ("blue", "green", "red") and splits["train"].images == 36
    assert splits["valid"].images == 12


@pytest.mark.parametrize("breakage, message", [
    (lambda root: (root / "train" / "red").rename(root / "valid" / "purple"), "valid/ has classes that train/ lacks"),
    (lambda root: (root / "train" / "empty").mkdir(), "class folders without images: empty"),
    (lambda root: (root / "train" / "blue" / "0.jpg").rename(root / "train" / "x.jpg"), "outside class folders"),
])
def test_check_layout_names_the_problem(image_folders, breakage, message):
    breakage(image_folders)
    with pytest.raises(UserError, match=message):
        datasets.check_layout(image_folders)


def test_check_layout_needs_train_with_two_classes(tmp_path):
    with pytest.raises(UserError, match="no train/"):
        datasets.check_layout(tmp_path)
    make_image_folder(tmp_path / "train", per_class=2, classes={"only": (1, 2, 3)})
    with pytest.raises(UserError, match="at least two"):
        datasets.check_layout(tmp_path)


def test_folders_named_as_channels_are_taken_as_they_are(image_folders):
    (image_folders / "train").rename(image_folders / "training")
    (image_folders / "valid").rename(image_folders / "validation")
    splits = datasets.check_layout(image_folders)
    assert list(splits) == ["training", "validation", "test"]
    assert datasets.channels("file:///d", splits) == {
        "training": "file:///d/training", "validation": "file:///d/validation", "test": "file:///d/test"}
    make_image_folder(image_folders / "train", per_class=1)
    with pytest.raises(UserError, match="train/ and training/ would be the same channel"):
        datasets.check_layout(image_folders)


def test_training_needs_a_training_channel(local):
    assert datasets.channels(None, validation="file:///v") == {"validation": "file:///v"}
    with pytest.raises(UserError, match="no training channel"):
        training.train(training.estimator(training.JobSpec(IMAGE, TINY), local), {"validation": "file:///v"})


def test_channels_map_splits_and_extras():
    assert datasets.channels("s3://b/dogs/", ["train", "valid", "test"], pretrained="s3://b/w") == {
        "training": "s3://b/dogs/train", "validation": "s3://b/dogs/valid", "test": "s3://b/dogs/test",
        "pretrained": "s3://b/w"}
    assert datasets.channels("file:///d", ["train"], test=None) == {"training": "file:///d/train"}


@pytest.fixture
def zip_server(tmp_path):
    """dogImages.zip's shape (dogImages/train|valid|test/<class>/) served over HTTP on 127.0.0.1."""
    for split, n in (("train", 3), ("valid", 1), ("test", 1)):
        make_image_folder(tmp_path / "src" / "dogImages" / split, per_class=n, size=(16, 16))
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "dogImages.zip", "w") as zf:
        for path in sorted((tmp_path / "src").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "src"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/dogImages.zip"
    server.shutdown()
    server.server_close()


def test_fetch_downloads_unpacks_and_finds_the_root(zip_server, tmp_path):
    root = datasets.fetch(tmp_path / "data", zip_server)
    assert root == tmp_path / "data" / "dogImages"
    assert datasets.check_layout(root)["train"].images == 9
    assert not list((tmp_path / "data").glob("*.part"))


def test_fetch_without_internet_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="cannot reach"):
        datasets.fetch(tmp_path, "http://127.0.0.1:9/dogImages.zip")  # discard port: nothing listens


def test_upload_puts_the_folder_under_the_prefix(aws, image_folders):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="data-bucket")
    uri = datasets.upload(image_folders, "s3://data-bucket/dogs", aws.session)
    assert uri == "s3://data-bucket/dogs"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="data-bucket")["Contents"]}
    assert "dogs/train/blue/0.jpg" in keys and len(keys) == 60
    assert datasets.s3_splits(uri, aws.session.boto_session) == ["train", "valid", "test"]


# ---------------------------------------------------------------------------------------------
# training


def test_estimator_kwargs_carry_the_contract(aws):
    spec = training.JobSpec(IMAGE, {**TINY, "batch-size": 16}, instance_count=2,
                            checkpoint_s3_uri="s3://b/ckpt", spot=True)
    kwargs = training.estimator_kwargs(spec, aws)
    assert kwargs["hyperparameters"] == {"arch": "resnet18", "pretrained": "false", "epochs": "1",
                                         "image-size": "32", "batch-size": "16"}
    assert kwargs["metric_definitions"] == metric_definitions()
    assert kwargs["checkpoint_local_path"] == "/opt/ml/checkpoints" and kwargs["checkpoint_s3_uri"] == "s3://b/ckpt"
    assert kwargs["use_spot_instances"] and kwargs["max_wait"] == spec.max_run
    assert (kwargs["instance_type"], kwargs["instance_count"], kwargs["role"]) == ("ml.g4dn.xlarge", 2, ROLE)


def test_distribution_is_sent_as_the_sdks_pytorch_estimator_sends_it(aws):
    from sagemaker.pytorch import PyTorch

    asked = {"torch_distributed": {"enabled": True}}
    sdk = PyTorch(entry_point="print_rank.py", source_dir=str(ROOT / "tests" / "user_script"), image_uri=IMAGE,
                  role=ROLE, instance_type="ml.m5.large", instance_count=2, distribution=asked,
                  sagemaker_session=aws.session).hyperparameters()
    kwargs = training.estimator_kwargs(training.JobSpec(IMAGE, TINY, instance_count=2, distribution=asked), aws)
    assert kwargs["hyperparameters"]["sagemaker_torch_distributed_enabled"] == sdk["sagemaker_torch_distributed_enabled"]
    assert "sagemaker_torch_distributed_enabled" not in training.estimator_kwargs(training.JobSpec(IMAGE, TINY), aws)[
        "hyperparameters"]
    with pytest.raises(UserError, match="torch_distributed only, not mpi"):
        training.estimator_kwargs(training.JobSpec(IMAGE, TINY, distribution={"mpi": {"enabled": True}}), aws)


@pytest.mark.parametrize("hyperparameters, message", [
    ({"epoch": 1}, "unknown hyperparameters: epoch"),
    ({"lr": "fast"}, "lr"),
    ({"arch": "vgg16"}, "vgg16"),
    ({"momentum": 2}, "momentum=2.0 is out of range"),
])
def test_bad_hyperparameters_fail_before_a_job_starts(aws, hyperparameters, message):
    with pytest.raises(UserError, match=message):
        training.estimator_kwargs(training.JobSpec(IMAGE, hyperparameters), aws)


def test_local_mode_refuses_what_only_sagemaker_does(local):
    with pytest.raises(UserError, match="local mode"):
        training.estimator_kwargs(training.JobSpec(IMAGE, {}, spot=True), local)
    with pytest.raises(UserError, match="local mode"):
        training.estimator_kwargs(training.JobSpec(IMAGE, {}, checkpoint_s3_uri="s3://b/c"), local)
    assert training.estimator_kwargs(training.JobSpec(IMAGE, TINY, instance_count=2), local)["instance_type"] == "local"


def test_spot_max_wait_shorter_than_max_run_is_refused(aws):
    with pytest.raises(UserError, match="max_wait"):
        training.estimator_kwargs(training.JobSpec(IMAGE, {}, spot=True, max_run=3600, max_wait=600), aws)


def test_training_job_request_on_aws(aws, sent):
    boto3.client("s3").create_bucket(Bucket="out")
    spec = training.JobSpec(IMAGE, TINY, instance_count=2, output_path="s3://out/jobs",
                            checkpoint_s3_uri="s3://out/ckpt", spot=True, max_wait=90000)
    inputs = datasets.channels("s3://data/dogs", ["train", "valid"])
    name = training.train(training.estimator(spec, aws), inputs, wait=False)
    job = aws.session.sagemaker_client.describe_training_job(TrainingJobName=name)
    assert name.startswith("imgclf-")
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    (request,) = sent["CreateTrainingJob"]
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]} == {
        "training": "s3://data/dogs/train", "validation": "s3://data/dogs/valid"}
    assert job["HyperParameters"]["image-size"] == "32"
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert job["CheckpointConfig"] == {"S3Uri": "s3://out/ckpt", "LocalPath": "/opt/ml/checkpoints"}
    assert job["EnableManagedSpotTraining"] and job["StoppingCondition"]["MaxWaitTimeInSeconds"] == 90000


# ---------------------------------------------------------------------------------------------
# tuning


def test_parameter_ranges_follow_the_search_space():
    ranges = {name: r.as_tuning_range(name) for name, r in tuning.parameter_ranges().items()}
    assert ranges["lr"] == {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}
    assert ranges["momentum"]["ScalingType"] == "Linear"
    assert ranges["batch-size"] == {"Name": "batch-size", "Values": ["32", "64", "128", "256"]}
    assert set(ranges) == set(SEARCH_SPACE)  # the default recipe's space
    assert set(tuning.parameter_ranges(fixed={"lr": 0.01, "recipe": '"linear"'})) == {"momentum", "batch-size"}
    assert set(tuning.parameter_ranges(fixed={"lr": 0.01, "recipe": "finetune"})) == {
        "momentum", "batch-size", "backbone-lr-ratio"}
    with pytest.raises(UserError, match="nothing to tune"):
        tuning.parameter_ranges(fixed=SEARCH_SPACE)


def test_tuning_job_request_and_best_trial_on_aws(aws, sent):
    boto3.client("s3").create_bucket(Bucket="out")
    spec = training.JobSpec(IMAGE, {"epochs": 3}, output_path="s3://out/jobs")
    tuner = tuning.tuner(spec, aws, max_jobs=12, max_parallel_jobs=3)
    tuner.fit(datasets.channels("s3://data/dogs", ["train", "valid"]), wait=False)
    client = aws.session.sagemaker_client
    job = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuner.latest_tuning_job.name)
    config = job["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian" and config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": OBJECTIVE_METRIC}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    ranges = config["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"][0]["ScalingType"] == "Logarithmic"
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["32", "64", "128", "256"]}]
    assert job["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] == "3"
    (request,) = sent["CreateHyperParameterTuningJob"]
    assert request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()

    # moto names its best trial FakeTrainingJobName: give it the hyperparameters a tuner passes
    best_name = job["BestTrainingJob"]["TrainingJobName"]
    client.create_training_job(
        TrainingJobName=best_name, RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        HyperParameters={"epochs": "3", "batch-size": '"64"', "lr": "0.0173", "momentum": "0.609",
                         "_tuning_objective_metric": OBJECTIVE_METRIC, "sagemaker_estimator_module": "x"},
        OutputDataConfig={"S3OutputPath": "s3://out/jobs"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 3600})
    best = tuning.best(tuner.latest_tuning_job.name, aws)
    assert best.job_name == best_name
    assert best.hyperparameters == {"epochs": 3, **BEST_KNOWN}
    assert "estimator.set_hyperparameters(**{" in best.describe()


def test_decode_hyperparameters_types_values_as_set_hyperparameters_takes_them():
    assert tuning.decode_hyperparameters({"batch-size": '"64"', "lr": "0.01", "arch": "resnet50",
                                          "freeze": "true", "sagemaker_region": '"us-east-1"'}) == {
        "batch-size": 64, "lr": 0.01, "arch": "resnet50", "freeze": True}


def test_hyperband_takes_its_resources_from_epochs_and_turns_early_stopping_off(aws, sent):
    spec = training.JobSpec(IMAGE, {"epochs": 9}, output_path="s3://out/jobs")
    tuner = tuning.tuner(spec, aws, max_jobs=6, max_parallel_jobs=2, strategy="Hyperband", seed=7)
    tuner.fit(datasets.channels("s3://data/dogs", ["train", "valid"]), wait=False)
    job = aws.session.sagemaker_client.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=tuner.latest_tuning_job.name)
    config = job["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Hyperband" and config["TrainingJobEarlyStoppingType"] == "Off"
    assert config["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 9}}
    (request,) = sent["CreateHyperParameterTuningJob"]
    assert request["HyperParameterTuningJobConfig"]["RandomSeed"] == 7
    with pytest.raises(UserError, match="Hyperband stops trials itself"):
        tuning.tuner(spec, aws, max_jobs=6, max_parallel_jobs=2, strategy="Hyperband", early_stopping="Auto")
    with pytest.raises(UserError, match="unknown strategy"):
        tuning.tuner(spec, aws, max_jobs=6, max_parallel_jobs=2, strategy="Genetic")


def test_warm_start_from_earlier_tuning_jobs(aws, sent):
    """moto accepts WarmStartConfig but does not keep it, so the request is what is checked."""
    spec = training.JobSpec(IMAGE, {"epochs": 3}, output_path="s3://out/jobs")
    tuner = tuning.tuner(spec, aws, max_jobs=4, max_parallel_jobs=2, warm_start=["tune-a", "tune-b"],
                         warm_start_type="TransferLearning")
    tuner.fit(datasets.channels("s3://data/dogs", ["train"]), wait=False)
    (request,) = sent["CreateHyperParameterTuningJob"]
    warm = request["WarmStartConfig"]
    assert warm["WarmStartType"] == "TransferLearning"
    assert sorted(p["HyperParameterTuningJobName"] for p in warm["ParentHyperParameterTuningJobs"]) == ["tune-a", "tune-b"]
    assert request["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] == "Auto"
    with pytest.raises(UserError, match="at most 5"):
        tuning.tuner(spec, aws, max_jobs=4, max_parallel_jobs=2, warm_start=[f"t{i}" for i in range(6)])


def test_tuning_on_a_features_channel_sends_no_images(aws, sent, cli_env, capsys, monkeypatch):
    """Every trial of a frozen backbone trains only the head on the features `imgclf features` computed."""
    monkeypatch.setattr(options, "target", lambda args: aws)  # the session whose requests `sent` records
    boto3.client("s3").create_bucket(Bucket="out")
    features = "s3://out/features/imgclf-features-1/output/model.tar.gz"
    cli.main(["tune", "--image-uri", IMAGE, "--role", ROLE, "--region", "us-east-1", "--features-data", features,
              "--epochs", "3", "--arch", "efficientnet_lite0", "--max-jobs", "8", "--no-wait",
              "--output-path", "s3://out/jobs"])
    (request,) = sent["CreateHyperParameterTuningJob"]
    definition = request["TrainingJobDefinition"]
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in definition["InputDataConfig"]} == {
        "features": features}
    assert definition["StaticHyperParameters"]["features"] == "true"
    assert "tuning job: " in capsys.readouterr().out


def test_features_command_starts_an_extract_features_job(aws, sent, cli_env, capsys, monkeypatch):
    monkeypatch.setattr(options, "target", lambda args: aws)
    boto3.client("s3").create_bucket(Bucket="out")
    cli.main(["features", "--image-uri", IMAGE, "--role", ROLE, "--region", "us-east-1",
              "--training", "s3://data/dogs/train", "--arch", "resnet50", "--no-wait", "--output-path", "s3://out/f"])
    (request,) = sent["CreateTrainingJob"]
    assert request["HyperParameters"]["extract-features"] == "true"
    assert request["TrainingJobName"].startswith("imgclf-features-")
    assert "training job: imgclf-features-" in capsys.readouterr().out


def test_best_json_round_trip_and_final_training(tmp_path, monkeypatch):
    best = tuning.Best("imgclf-1-001", 0.91, tuning.decode_hyperparameters(
        {"epochs": "3", "batch-size": '"128"', "lr": "0.02", "features": "true", "_tuning_objective_metric": "x"}))
    # the trial ran on cached features, so with linear's ingredients: the final job must too
    assert best.to_json() == {"hyperparameters": {"epochs": 3, "batch-size": 128, "lr": 0.02, "recipe": "linear"},
                              "objective": {"metric": OBJECTIVE_METRIC, "type": "Maximize", "value": 0.91},
                              "training_job": "imgclf-1-001"}
    path = tuning.write_best(best.to_json(), tmp_path / "best.json")
    assert tuning.read_best(path) == {"epochs": 3, "batch-size": 128, "lr": 0.02, "recipe": "linear"}

    monkeypatch.setenv(options.IMAGE_URI_ENV, IMAGE)
    target = session.local_target(tmp_path)
    args = cli.get_args_parser().parse_args(["train", "--local", "--best", str(path), "--momentum", "0.5"])
    assert options.job_spec(args, target).hyperparameters == {"epochs": 15, "batch-size": 128, "lr": 0.02,
                                                          "recipe": "linear", "momentum": "0.5"}
    args = cli.get_args_parser().parse_args(["train", "--local", "--best", str(path), "--epochs", "4"])
    assert options.job_spec(args, target).hyperparameters["epochs"] == "4"
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(UserError, match="not a best-trial file"):
        tuning.read_best(tmp_path / "bad.json")


def test_local_search_runs_the_tuner_in_one_container(tmp_path):
    command = tuning.local_search_command("imgclf:test", tmp_path / "data", tmp_path / "out", trials=8,
                                          fixed={"epochs": 3, "pretrained": True}, seed=4)
    assert command[:3] == ["docker", "run", "--rm"]
    assert f"{(tmp_path / 'data').resolve()}:{tuning.CONTAINER_DATA}:ro" in command
    assert command[command.index("imgclf:test") + 1:] == [
        "imgclf-tune", "--data", tuning.CONTAINER_DATA, "--output", tuning.CONTAINER_OUTPUT, "--trials", "8",
        "--pruner", "median", "--sampler-seed", "4", "--epochs", "3", "--pretrained", "true"]


def test_launcher_and_its_tuning_code_do_not_import_torch():
    """imgclf --help and the tuning code read the hyperparameter table, not the training script."""
    code = ("import contextlib, io, sys\n"
            "from imgclf.launch import cli, tuning, training\n"
            "from imgclf import hpo\nfrom imgclf.train import hyperparameters\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    cli.main(['--help'])\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    cli.main(['tune', '--help'])\n"
            "hyperparameters.parse({'lr': '0.01', 'batch-size': '64'})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------
# hosting


def test_content_type_follows_the_file_name():
    assert hosting.content_type("a/dog.JPG") == "image/jpeg"
    assert hosting.content_type("dog.png") == "image/png"
    assert hosting.content_type("dog.webp") == "application/x-image"


def test_format_answer_prints_top_k_rows():
    answer = {"predictions": [[{"label": "beagle", "probability": 0.9}, {"label": "pug", "probability": 0.1}]]}
    assert hosting.format_answer(answer) == "label=beagle  probability=0.9\nlabel=pug  probability=0.1"
    assert hosting.format_answer({"error": "bad"}) == json.dumps({"error": "bad"}, indent=2)


def test_serverless_memory_must_be_a_supported_size():
    assert hosting.serverless_config(2048, 4).memory_size_in_mb == 2048
    with pytest.raises(UserError, match="1024, 2048"):
        hosting.serverless_config(1500, 4)


def test_deploy_real_time_and_serverless_on_aws(aws):
    client = aws.session.sagemaker_client
    pred = hosting.deploy(aws, IMAGE, "s3://out/model.tar.gz", instance_type="ml.c5.xlarge", instance_count=2,
                          endpoint_name="real-time", wait=False)
    variant = client.describe_endpoint_config(EndpointConfigName="real-time")["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.xlarge", 2)
    model = client.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
    assert (model["Image"], model["ModelDataUrl"]) == (IMAGE, "s3://out/model.tar.gz")
    assert pred.endpoint_name == "real-time"

    hosting.deploy(aws, IMAGE, "s3://out/model.tar.gz", endpoint_name="serverless",
                   serverless=hosting.serverless_config(3072, 2), wait=False)
    variant = client.describe_endpoint_config(EndpointConfigName="serverless")["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 2}


def test_deploy_multi_model_on_aws(aws):
    hosting.deploy_multi_model(aws, IMAGE, "s3://out/models/", endpoint_name="mme", wait=False)
    client = aws.session.sagemaker_client
    variant = client.describe_endpoint_config(EndpointConfigName="mme")["ProductionVariants"][0]
    container = client.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
    assert container["Mode"] == "MultiModel" and container["ModelDataUrl"] == "s3://out/models/"


def test_delete_removes_endpoint_config_and_model(aws):
    client = aws.session.sagemaker_client
    hosting.deploy(aws, IMAGE, "s3://out/model.tar.gz", endpoint_name="to-delete", wait=False)
    hosting.deploy(aws, IMAGE, "s3://out/model.tar.gz", endpoint_name="to-keep", wait=False)
    deleted = hosting.delete(aws, "to-delete")
    assert deleted == {"endpoint": ["to-delete"], "endpoint_config": ["to-delete"], "model": ["to-delete"]}
    assert [e["EndpointName"] for e in client.list_endpoints()["Endpoints"]] == ["to-keep"]
    assert [c["EndpointConfigName"] for c in client.list_endpoint_configs()["EndpointConfigs"]] == ["to-keep"]
    assert [m["ModelName"] for m in client.list_models()["Models"]] == ["to-keep"]


def test_transform_job_request_on_aws(aws):
    out = hosting.transform(aws, IMAGE, "s3://out/model.tar.gz", "s3://data/images", "s3://out/predictions",
                            instance_count=2, wait=False)
    assert out == "s3://out/predictions"
    client = aws.session.sagemaker_client
    (summary,) = client.list_transform_jobs()["TransformJobSummaries"]
    job = client.describe_transform_job(TransformJobName=summary["TransformJobName"])
    assert job["TransformInput"]["ContentType"] == "application/x-image"
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://data/images"
    assert job["TransformResources"]["InstanceCount"] == 2 and job["TransformOutput"]["Accept"] == "application/json"


def test_endpoints_tell_the_container_their_serving_profile(aws):
    client = aws.session.sagemaker_client

    def profile(endpoint):
        variant = client.describe_endpoint_config(EndpointConfigName=endpoint)["ProductionVariants"][0]
        return client.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]["Environment"]

    hosting.deploy(aws, IMAGE, "s3://out/model.tar.gz", endpoint_name="rt", wait=False)
    hosting.deploy(aws, IMAGE, "s3://out/model.tar.gz", endpoint_name="sl", wait=False,
                   serverless=hosting.serverless_config(1024, 1), env={"IMGCLF_TOP_K": "3"})
    assert profile("rt") == {"IMGCLF_SERVING_PROFILE": "real-time"}
    assert profile("sl") == {"IMGCLF_SERVING_PROFILE": "serverless", "IMGCLF_TOP_K": "3"}


def test_async_endpoint_and_its_limits(aws, sent, cli_env, capsys, monkeypatch):
    """`imgclf deploy --async`: an AsyncInferenceConfig writing answers (and failures) under the prefix,
    and the container told to serve its async profile (payloads up to 1 GB, an hour per request)."""
    monkeypatch.setattr(options, "target", lambda args: aws)
    cli.main(["deploy", "--image-uri", IMAGE, "--role", ROLE, "--region", "us-east-1", "--model-data",
              "s3://out/model.tar.gz", "--endpoint-name", "async", "--async", "s3://out/async/",
              "--async-concurrency", "2"])
    (config,) = sent["CreateEndpointConfig"]
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {"S3OutputPath": "s3://out/async", "S3FailurePath": "s3://out/async/failures"},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2}}
    (model,) = sent["CreateModel"]
    assert model["PrimaryContainer"]["Environment"] == {"IMGCLF_SERVING_PROFILE": "async"}
    assert "endpoint: async" in capsys.readouterr().out
    with pytest.raises(UserError, match="not an s3:// path"):
        hosting.async_config("/tmp/answers")
    with pytest.raises(UserError, match="need SageMaker"):
        hosting.deploy(session.local_target(), IMAGE, "file:///m.tar.gz", async_inference=hosting.async_config("s3://a"))


def test_batch_sized_transform(aws, sent, cli_env, capsys, monkeypatch):
    """`imgclf transform --max-payload-mb 20`: MaxPayloadInMB, which SageMaker passes to the container
    (SAGEMAKER_MAX_PAYLOAD_IN_MB), and the batch profile's hour per record instead of SageMaker's 600 s."""
    monkeypatch.setattr(options, "target", lambda args: aws)
    cli.main(["transform", "--image-uri", IMAGE, "--role", ROLE, "--region", "us-east-1", "--model-data",
              "s3://out/model.tar.gz", "--data", "s3://data/images", "--output-path", "s3://out/p",
              "--max-payload-mb", "20", "--no-wait"])
    (request,) = sent["CreateTransformJob"]
    assert request["MaxPayloadInMB"] == 20 and request["BatchStrategy"] == "SingleRecord"
    assert request["ModelClientConfig"]["InvocationsTimeoutInSeconds"] == 3600
    client = aws.session.sagemaker_client
    (summary,) = client.list_transform_jobs()["TransformJobSummaries"]
    assert client.describe_transform_job(TransformJobName=summary["TransformJobName"])["MaxPayloadInMB"] == 20
    with pytest.raises(UserError, match="0 \\(no limit\\) to 100 MB"):
        hosting.transform(aws, IMAGE, "s3://out/model.tar.gz", "s3://d", "s3://o", max_payload_mb=101, wait=False)


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_sends_only_given_hyperparameters(tmp_path, image_folders, monkeypatch):
    monkeypatch.setenv(options.IMAGE_URI_ENV, "imgclf:test")
    args = cli.get_args_parser().parse_args(
        ["train", "--local", "--data", str(image_folders), "--epochs", "2", "--batch-size", "8",
         "--pretrained", "false", "--local-root", str(tmp_path)])
    target = session.local_target(tmp_path)
    spec = options.job_spec(args, target)
    assert spec.hyperparameters == {"epochs": "2", "batch-size": "8", "pretrained": "false"}
    assert spec.output_path == (tmp_path / "imgclf-output").resolve().as_uri()
    assert options.inputs(args, target) == {"training": (image_folders / "train").resolve().as_uri(),
                                         "validation": (image_folders / "valid").resolve().as_uri(),
                                         "test": (image_folders / "test").resolve().as_uri()}


@pytest.fixture
def cli_env(monkeypatch):
    monkeypatch.delenv("SAGEMAKER_SUPPRESS_V2_WARNING", raising=False)  # restored after cli.main sets it


def test_cli_local_mode_refuses_what_it_cannot_remember(cli_env, tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        cli.main(["deploy", "--local", "--image-uri", "imgclf:test", "--training-job", "job",
                  "--local-root", str(tmp_path)])
    assert "give --model-data" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        cli.main(["tune", "--local", "--best", "tuning-job", "--image-uri", "imgclf:test",
                  "--local-root", str(tmp_path)])
    assert "a local search writes best.json" in capsys.readouterr().err


def test_cli_reports_user_errors_without_traceback(cli_env, tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        cli.main(["data", "check", str(tmp_path)])
    assert capsys.readouterr().err.startswith("imgclf: error: no train/ folder")


def test_cli_data_check_prints_the_splits(cli_env, image_folders, capsys):
    cli.main(["data", "check", str(image_folders)])
    assert capsys.readouterr().out.splitlines() == [
        "train: 3 classes, 36 images", "valid: 3 classes, 12 images", "test: 3 classes, 12 images"]
