"""The launcher's tracking flags: the job's environment, TensorBoardOutputConfig, a local search's
docker options, and a SageMaker tuning job's parent run on a real MLflow server."""
from types import SimpleNamespace

from mlflow_support import mlflow_server, runs_of  # noqa: F401 (fixture)

from imgclf.launch.cli import get_args_parser
from imgclf.tracking import launch


def parse(*argv):
    return get_args_parser().parse_args(["train", "--data", "s3://b/d", *argv])


def test_train_flags_become_the_jobs_environment_and_tensorboard_output_config():
    args = parse("--mlflow", "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/t",
                 "--mlflow-experiment", "dogs", "--tensorboard", "s3://b/tb")
    kwargs = launch.estimator_kwargs(args, "123.dkr.ecr.us-east-1.amazonaws.com/imgclf:1")
    assert kwargs["environment"] == {"MLFLOW_TRACKING_URI": args.mlflow, "MLFLOW_EXPERIMENT_NAME": "dogs",
                                     "IMGCLF_IMAGE_URI": "123.dkr.ecr.us-east-1.amazonaws.com/imgclf:1"}
    assert kwargs["tensorboard_output_config"]._to_request_dict() == {
        "S3OutputPath": "s3://b/tb", "LocalPath": "/opt/ml/output/tensorboard"}
    assert launch.estimator_kwargs(parse()) == {}


def test_a_local_search_container_reaches_a_server_on_this_machine():
    flags = launch.docker_flags(parse("--mlflow", "http://127.0.0.1:5000"))
    assert flags == ["--env", "MLFLOW_TRACKING_URI=http://127.0.0.1:5000", "--network", "host"]
    assert "--network" not in launch.docker_flags(parse("--mlflow", "https://mlflow.example.com"))
    assert launch.docker_flags(parse()) == []


def test_a_sagemaker_tuning_job_gets_a_parent_run_that_its_trials_name(mlflow_server):
    args = parse("--mlflow", mlflow_server, "--mlflow-experiment", "tuner-test", "--tensorboard", "s3://b/tb")
    tuner = SimpleNamespace(estimator=SimpleNamespace(image_uri="img:1", environment={"A": "1"},
                                                      tensorboard_output_config=None))
    parent = launch.configure_tuner(tuner, args)
    env = tuner.estimator.environment
    assert env["A"] == "1" and env["MLFLOW_TRACKING_URI"] == mlflow_server and env["IMGCLF_MLFLOW_PARENT_RUN_ID"] == parent
    assert tuner.estimator.tensorboard_output_config is not None
    launch.end_parent_run(args, parent)
    _, runs = runs_of(mlflow_server, "tuner-test")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(parent, "FINISHED")]
