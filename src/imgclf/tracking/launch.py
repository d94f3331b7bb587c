"""The launcher's side of experiment tracking: `--mlflow URI|ARN` and `--tensorboard S3_URI` on
`imgclf train`, `features` and `tune`, turned into the job's environment and SageMaker's
TensorBoardOutputConfig. Imports neither torch nor MLflow (a SageMaker tuning job's parent run
needs the MLflow client where the launcher runs, and is skipped with one line without it).
"""
from __future__ import annotations

import logging
from urllib.parse import urlparse

from .settings import EXPERIMENT_ENV, IMAGE_ENV, PARENT_RUN_ENV, TENSORBOARD_LOCAL_PATH, TRACKING_URI_ENV

log = logging.getLogger("imgclf.tracking")


def add_tracking_arguments(parser) -> None:
    g = parser.add_argument_group("experiment tracking")
    g.add_argument("--mlflow", metavar="URI|ARN", help="log the job to this MLflow tracking server: its URI, or the "
                                                       "ARN of a SageMaker managed MLflow tracking server (default: none)")
    g.add_argument("--mlflow-experiment", metavar="NAME", help="MLflow experiment (default: imgclf)")
    g.add_argument("--tensorboard", metavar="S3_URI", help="TensorBoard event files: SageMaker uploads them here "
                                                           "(TensorBoardOutputConfig; default: none)")


def tracking_environment(args, image_uri: str | None = None) -> dict[str, str]:
    """The job's environment variables for MLflow; empty without --mlflow."""
    if not getattr(args, "mlflow", None):
        return {}
    env = {TRACKING_URI_ENV: args.mlflow}
    if args.mlflow_experiment:
        env[EXPERIMENT_ENV] = args.mlflow_experiment
    if image_uri:
        env[IMAGE_ENV] = image_uri
    return env


def estimator_kwargs(args, image_uri: str | None = None) -> dict:
    """`environment` and `tensorboard_output_config` for sagemaker's Estimator, as the flags ask."""
    kwargs = {}
    environment = tracking_environment(args, image_uri)
    if environment:
        kwargs["environment"] = environment
    if getattr(args, "tensorboard", None):
        from sagemaker.debugger import TensorBoardOutputConfig

        kwargs["tensorboard_output_config"] = TensorBoardOutputConfig(
            s3_output_path=args.tensorboard, container_local_output_path=TENSORBOARD_LOCAL_PATH)
    return kwargs


def configure_tuner(tuner, args) -> str | None:
    """The tracking flags on a tuner's estimator (every trial), and the search's MLflow parent run,
    whose id the trials tag themselves with; returns that id (None without MLflow)."""
    est = tuner.estimator
    for key, value in estimator_kwargs(args, est.image_uri).items():
        setattr(est, key, {**(est.environment or {}), **value} if key == "environment" else value)
    if not getattr(args, "mlflow", None):
        return None
    parent = _start_parent_run(args)
    if parent:
        est.environment[PARENT_RUN_ENV] = parent
    return parent


def end_parent_run(args, run_id: str | None, status: str = "FINISHED") -> None:
    if run_id:
        from mlflow.tracking import MlflowClient

        MlflowClient(args.mlflow).set_terminated(run_id, status)


def _start_parent_run(args) -> str | None:
    try:
        from .mlflow import connect, create_run
        from .settings import MlflowSettings

        settings = MlflowSettings.from_environ(tracking_environment(args))
        client = connect(settings)
        return create_run(client, settings, run_name="tuning job", tags={"imgclf.kind": "search"})
    except Exception as e:  # ImportError included: the trials are logged all the same, without a parent
        log.warning("no MLflow parent run for the tuning job (%s: %s); each trial logs its own run",
                    type(e).__name__, e)
        return None


def docker_flags(args) -> list[str]:
    """`docker run` options of a local search container: the MLflow variables, and the host's network
    when the server listens on this machine's loopback."""
    flags = [a for k, v in tracking_environment(args).items() for a in ("--env", f"{k}={v}")]
    if flags and urlparse(args.mlflow).hostname in ("127.0.0.1", "localhost", "::1"):
        flags += ["--network", "host"]
    return flags
