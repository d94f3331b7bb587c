"""The options several `imgclf` commands share, each group built by one function, and what they
turn into: the target (AWS or local mode), the image, the job spec, the channels, the model.

A flag for every command that runs a job goes in `job_options`; a flag of one command goes in
that command's module under commands/.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from ..names import UserError
from ..tracking.launch import add_tracking_arguments

IMAGE_URI_ENV = "IMGCLF_IMAGE_URI"
# the launcher's defaults, here alone: the flags state them, JobSpec (training.py) and hosting.py take them
TRAINING_INSTANCE_TYPE = "ml.g4dn.xlarge"  # one NVIDIA T4
SERVING_INSTANCE_TYPE = "ml.m5.large"  # 2 vCPUs
INSTANCE_COUNT = 1
VOLUME_SIZE_GB = 30
MAX_RUN_S = 24 * 60 * 60  # SageMaker's own default
LOCAL_SERVING_PORT = 8080


def where_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    where = p.add_argument_group("where to run")
    where.add_argument("--local", action="store_true",
                       help="SageMaker local mode: Docker Compose on this machine, file:// data, no AWS account "
                            "(default: SageMaker on AWS)")
    where.add_argument("--region", help="AWS region (default: $AWS_REGION, else the AWS configuration's)")
    where.add_argument("--role", help="execution role ARN (default: $SAGEMAKER_ROLE, or the notebook's role)")
    where.add_argument("--local-root", help="local mode: folder for the SDK's job folders and default output "
                                            "(default: the system's temporary folder; output in ./imgclf-output)")
    where.add_argument("--serving-port", type=int, default=LOCAL_SERVING_PORT,
                       help=f"local mode: port of a local endpoint (default: {LOCAL_SERVING_PORT})")
    where.add_argument("--local-gpu", action="store_true",
                       help="local mode: give the containers this machine's GPUs (default: CPU only)")
    return p


def image_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--image-uri",
                   help=f"the image: an ECR URI, or a local tag with --local (default: ${IMAGE_URI_ENV})")
    return p


def instance_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--instance-type", default=SERVING_INSTANCE_TYPE,
                   help=f"the endpoint's or transform's instances (default: {SERVING_INSTANCE_TYPE})")
    p.add_argument("--instance-count", type=int, default=INSTANCE_COUNT, help=f"(default: {INSTANCE_COUNT})")
    return p


def model_source_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model-data", help="model.tar.gz URI (s3://, or a path with --local; default: --training-job's)")
    p.add_argument("--training-job", help="take the model artifact of this training job (default: none)")
    return p


def job_options() -> argparse.ArgumentParser:
    """Data channels, the job's resources, and every hyperparameter of the training job's table."""
    p = argparse.ArgumentParser(add_help=False)
    add_tracking_arguments(p)
    data = p.add_argument_group("data (channels)")
    data.add_argument("--data", help="data root with train/ [valid/ test/]: s3:// prefix, or a folder with --local "
                                     "(default: none; then --training or --features-data)")
    data.add_argument("--training", help="training channel URI (default: --data's train/)")
    data.add_argument("--validation", help="validation channel URI (default: --data's valid/)")
    data.add_argument("--test", help="test channel URI (default: --data's test/)")
    data.add_argument("--pretrained-weights", help="pretrained channel URI: a folder with <arch>.pth (default: the "
                                                   "image's weights)")
    data.add_argument("--features-data", metavar="URI",
                      help="features channel URI: the model.tar.gz (or folder) of `imgclf features`; sets "
                           "features=true, so a frozen backbone's head trains on it (default: none)")
    job = p.add_argument_group("job")
    job.add_argument("--instance-type", default=TRAINING_INSTANCE_TYPE,
                     help=f"training instances (default: {TRAINING_INSTANCE_TYPE}, a GPU; ml.m5.xlarge for CPUs)")
    job.add_argument("--instance-count", type=int, default=INSTANCE_COUNT,
                     help=f"more than one trains distributed (DDP) (default: {INSTANCE_COUNT})")
    job.add_argument("--volume-size", type=int, default=VOLUME_SIZE_GB,
                     help=f"GB of disk per instance (default: {VOLUME_SIZE_GB})")
    job.add_argument("--output-path", help="where model.tar.gz goes (default: the session bucket; --local: "
                                           "imgclf-output/ under --local-root or here)")
    job.add_argument("--checkpoint-s3-uri", help="checkpoints synced here, a restarted job resumes from them "
                                                 "(default: none)")
    job.add_argument("--spot", action="store_true",
                     help="managed spot training (use with --checkpoint-s3-uri) (default: on-demand)")
    job.add_argument("--max-run", type=int, default=MAX_RUN_S, help=f"seconds (default: {MAX_RUN_S})")
    job.add_argument("--max-wait", type=int, help="spot: seconds to wait for capacity, run time included "
                                                  "(default: --max-run)")
    job.add_argument("--no-wait", action="store_true", help="start the job and return (default: wait, logs shown)")
    add_hyperparameter_options(p.add_argument_group("hyperparameters (sent to the job; defaults are the image's)"))
    return p


def add_hyperparameter_options(group) -> None:
    """`--name VALUE` per hyperparameter, checked by the job's own table before AWS or Docker is called."""
    from ..train.hyperparameters import HYPERPARAMETERS, flag_help

    for hp in HYPERPARAMETERS:
        group.add_argument(f"--{hp.name}", dest=hyperparameter_dest(hp.name), metavar="VALUE", help=flag_help(hp))


def hyperparameter_dest(name: str) -> str:
    return "hp_" + name.replace("-", "_")


def given_hyperparameters(args) -> dict:
    """The hyperparameters given on the command line, by name."""
    from ..train.hyperparameters import HYPERPARAMETERS

    return {hp.name: getattr(args, hyperparameter_dest(hp.name)) for hp in HYPERPARAMETERS
            if getattr(args, hyperparameter_dest(hp.name), None) is not None}


@dataclass(frozen=True)
class Parents:
    """The shared option groups, built once per parser, for `add_parser(..., parents=[...])`."""

    where: argparse.ArgumentParser
    image: argparse.ArgumentParser
    instances: argparse.ArgumentParser
    model_source: argparse.ArgumentParser
    job: argparse.ArgumentParser

    @classmethod
    def build(cls) -> Parents:
        return cls(where_options(), image_options(), instance_options(), model_source_options(), job_options())


# ---------------------------------------------------------------------------------------------
# what the options turn into


def check(args) -> None:
    """What needs neither AWS nor Docker, checked before either is called: a job's image and
    hyperparameters, and local mode's model file."""
    if hasattr(args, "hp_epochs") and not getattr(args, "best", None):  # a job command, not `tune --best`
        from .training import check_hyperparameters

        image_uri(args)
        check_hyperparameters(job_hyperparameters(args))
    model = getattr(args, "model_data", None)
    if args.local and model and "://" not in model and not Path(model).exists():
        raise UserError(f"no file {model}: give --model-data the model.tar.gz that `imgclf train --local` printed")
    if hasattr(args, "tags"):  # the account's flags (account.py), and deploy's own
        from . import account, hosting_flags

        account.check(args)
        if hasattr(args, "autoscale"):
            hosting_flags.check(args)


def target(args):
    """Where the command runs, once its flags passed `check`."""
    from .session import check_docker, target as make_target

    check(args)
    if args.local:
        check_docker()
    return make_target(args.local, region=args.region, role=args.role,
                       **({"container_root": args.local_root, "serving_port": args.serving_port,
                           "gpu": args.local_gpu} if args.local else {}))


def image_uri(args) -> str:
    uri = args.image_uri or os.environ.get(IMAGE_URI_ENV)
    if not uri:
        raise UserError(f"no image: give --image-uri or set ${IMAGE_URI_ENV} (ECR URI, or a local tag with --local)")
    return uri


def default_local_output(args) -> str:
    return Path(args.local_root or ".", "imgclf-output").resolve().as_uri()


def job_spec(args, target):
    """The training job of a train, features or tune command: image, resources, hyperparameters, account."""
    from . import account
    from .training import JobSpec

    output = args.output_path or (default_local_output(args) if target.local else None)
    return JobSpec(image_uri=image_uri(args), hyperparameters=job_hyperparameters(args),
                   instance_type=args.instance_type, instance_count=args.instance_count, output_path=output,
                   checkpoint_s3_uri=args.checkpoint_s3_uri, spot=args.spot, max_run=args.max_run, max_wait=args.max_wait, volume_size=args.volume_size,
                   account=account.from_args(args))


def job_hyperparameters(args) -> dict:
    """The hyperparameters a job command sends: --best's trial, then the flags given."""
    from ..train.hyperparameters import EPOCHS, FEATURES

    hyperparameters = {}
    if getattr(args, "best_trial", None):  # the final model: the best trial's values, FINAL_EPOCHS epochs
        from ..hpo import FINAL_EPOCHS
        from .tuning import read_best

        hyperparameters = {**read_best(Path(args.best_trial)), EPOCHS: FINAL_EPOCHS}
    hyperparameters.update(given_hyperparameters(args))
    if args.features_data:
        hyperparameters[FEATURES] = True
    return hyperparameters


def inputs(args, target) -> dict[str, str]:
    """Channel name -> URI from --data and the per-channel flags."""
    from . import datasets

    extra = dict(training=args.training, validation=args.validation, test=args.test,
                 pretrained=args.pretrained_weights, features=args.features_data)
    if target.local:
        extra = {k: datasets.local_uri(v) for k, v in extra.items() if v}
    if not args.data:
        return datasets.channels(None, **extra)
    if args.data.startswith("s3://"):
        return datasets.channels(args.data, datasets.s3_splits(args.data, target.session.boto_session), **extra)
    root = Path(args.data.removeprefix("file://"))
    splits = datasets.check_layout(root)
    return datasets.channels(datasets.local_uri(str(root)), splits, **extra)


def model_data(args, target) -> str:
    from . import datasets

    if args.model_data:
        return datasets.local_uri(args.model_data) if target.local else args.model_data
    if args.training_job:
        if target.local:
            raise UserError("local jobs are not remembered between commands: give --model-data, the "
                            "model.tar.gz that `imgclf train --local` printed")
        job = target.session.sagemaker_client.describe_training_job(TrainingJobName=args.training_job)
        return job["ModelArtifacts"]["S3ModelArtifacts"]
    raise UserError("give --model-data (model.tar.gz URI) or --training-job NAME")
