"""`imgclf`: the SageMaker steps of the project on one command line.

    imgclf data fetch ./data                       download and unpack dogImages.zip
    imgclf data check ./data/dogImages             class folders per split, image counts
    imgclf data upload ./data/dogImages s3://bucket/dogs
    imgclf train --data s3://bucket/dogs --epochs 5 --instance-count 2
    imgclf features --data s3://bucket/dogs --arch resnet50 --image-size 224
    imgclf tune --data s3://bucket/dogs --max-jobs 20 --max-parallel-jobs 2 [--features s3://.../model.tar.gz]
    imgclf tune --local --data ./data --max-jobs 8 --epochs 3     the Optuna tuner in one container
    imgclf train --best best.json --data s3://bucket/dogs         the final model with the best trial's values
    imgclf deploy --training-job imgclf-2024-... [--serverless-memory 4096 | --async s3://... | --multi-model s3://...]
    imgclf invoke ENDPOINT dog.jpg --top-k 3
    imgclf delete ENDPOINT
    imgclf transform --model-data s3://.../model.tar.gz --data s3://bucket/images --output-path s3://...
                     [--max-payload-mb 20]

Every command takes --local: SageMaker local mode with Docker Compose, file:// data and output,
no AWS account. The image comes from --image-uri or $IMGCLF_IMAGE_URI.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ..contract import UserError
from . import hosting_flags

IMAGE_URI_ENV = "IMGCLF_IMAGE_URI"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # "not applying defaults from ...", and "will collect telemetry" printed even when opted out
    for noisy in ("sagemaker.config", "sagemaker.telemetry.telemetry_logging"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # v2 is chosen on purpose (README: the launcher): say so once there, not on every command
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    args = get_args_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        args.func(args)
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"{args.command} took {time.perf_counter() - start:.1f} s", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# commands


def cmd_data(args) -> None:
    from . import datasets

    if args.action == "fetch":
        root = datasets.fetch(Path(args.path), args.url or datasets.DOG_IMAGES_URL)
        print(f"data set in {root}")
        _print_layout(datasets.check_layout(root))
    elif args.action == "check":
        _print_layout(datasets.check_layout(Path(args.path)))
    elif args.local:  # upload: local mode reads the folder where it is
        datasets.check_layout(Path(args.path))
        print(datasets.local_uri(Path(args.path)))
    else:
        if not args.s3_uri:
            raise UserError("data upload needs an S3 URI: imgclf data upload DIR s3://bucket/prefix")
        print(datasets.upload(Path(args.path), args.s3_uri, _target(args).session))


def _print_layout(splits) -> None:
    for split in splits.values():
        print(f"{split.name}: {len(split.classes)} classes, {split.images} images")


def cmd_train(args) -> None:
    from sagemaker.estimator import Estimator

    from .training import estimator_kwargs, train

    target = _target(args)
    spec = _job_spec(args, target)
    kwargs = estimator_kwargs(spec, target)
    if args.sagemaker_debugger:
        from . import debugger

        kwargs.update(debugger.estimator_kwargs(target, spec.hyperparameters))
    result = train(Estimator(**kwargs), _inputs(args, target), wait=not args.no_wait)
    print(f"model artifact: {result}" if not args.no_wait else f"training job: {result}")


def cmd_features(args) -> None:
    """An extract-features job: its model.tar.gz is the features channel of later jobs."""
    from .training import estimator, train

    target = _target(args)
    spec = _job_spec(args, target)
    spec.hyperparameters["extract-features"] = True
    spec.base_job_name = "imgclf-features"
    result = train(estimator(spec, target), _inputs(args, target), wait=not args.no_wait)
    if args.no_wait:
        print(f"training job: {result}")
    else:
        print(f"features: {result}\n(give it to the jobs of this data, arch, weights and image size: "
              f"imgclf tune --features {result} ...)")


def cmd_tune(args) -> None:
    from . import tuning

    target = _target(args)
    if args.best:
        if target.local:
            raise UserError("--best reads a SageMaker tuning job; a local search writes best.json when it ends")
        _show_best(tuning.best(args.best, target), args.best_json or f"{args.best}.best.json")
        return
    if target.local:
        _local_tune(args, tuning)
        return
    spec = _job_spec(args, target)
    tuner = tuning.tuner(spec, target, max_jobs=args.max_jobs, max_parallel_jobs=args.max_parallel_jobs,
                         strategy=args.strategy, early_stopping=args.early_stopping,
                         warm_start=args.warm_start or (), warm_start_type=args.warm_start_type, seed=args.tuner_seed)
    tuner.fit(_inputs(args, target), wait=False)
    name = tuner.latest_tuning_job.name
    print(f"tuning job: {name}")
    if not args.no_wait:
        tuner.wait()
        _show_best(tuning.best(name, target), args.best_json or f"{name}.best.json")


def _show_best(best, path) -> None:
    from .tuning import write_best

    print(best.describe())
    print(f"best trial written to {write_best(best.to_json(), Path(path))}; "
          f"final model: imgclf train --best {path} --data ...")


def _local_tune(args, tuning) -> None:
    """The Optuna tuner in one container: trials in turn, heads on cached features, resumable."""
    if not args.data or args.training or args.validation or args.test or args.features:
        raise UserError("a local search takes its images from --data (a folder with train/ [valid/ test/]); "
                        "it computes the features itself")
    if args.strategy not in ("Bayesian", None) or args.warm_start:
        raise UserError("a local search is Optuna's TPE with --pruner; --strategy and --warm-start are "
                        "SageMaker's")
    fixed = dict(_job_spec(args, _target(args)).hyperparameters)
    output = Path(args.output_path.removeprefix("file://")) if args.output_path else \
        Path(args.local_root or ".") / "imgclf-tuning"
    best = tuning.local_search(_image_uri(args), Path(args.data.removeprefix("file://")), output,
                               trials=args.max_jobs, pruner=args.pruner, fixed=fixed, features=not args.no_features,
                               seed=args.tuner_seed or 0, gpu=args.local_gpu)
    print(f"best trial: {output / 'best.json'} ({best['objective']['metric']}={best['objective']['value']})")


def cmd_deploy(args) -> None:
    from . import hosting

    target = _target(args)
    image_uri = _image_uri(args)
    if args.multi_model:
        pred = hosting.deploy_multi_model(target, image_uri, args.multi_model, instance_type=args.instance_type,
                                          instance_count=args.instance_count, endpoint_name=args.endpoint_name)
    else:
        serverless = (hosting.serverless_config(args.serverless_memory, args.serverless_concurrency)
                      if args.serverless_memory else None)
        pred = hosting.deploy(target, image_uri, _model_data(args, target), instance_type=args.instance_type,
                              instance_count=args.instance_count, endpoint_name=args.endpoint_name,
                              serverless=serverless, **hosting_flags.deploy_options(args))
    print(f"endpoint: {pred.endpoint_name}", flush=True)
    if target.local:
        # A local endpoint is a container owned by this process: serve until interrupted, then clean up.
        print(f"serving on http://localhost:{args.serving_port}/invocations; "
              f"`imgclf invoke --local {pred.endpoint_name} IMAGE` in another shell; Ctrl-C deletes it", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        print(f"deleted {hosting.delete(target, pred.endpoint_name)}")


def cmd_invoke(args) -> None:
    from . import hosting

    target = _target(args)
    pred = hosting.predictor(target, args.endpoint_name)
    for image in args.images:
        answer = hosting.invoke(pred, Path(image), top_k=args.top_k, target_model=args.target_model)
        print(f"{image}:\n{hosting.format_answer(answer)}")


def cmd_delete(args) -> None:
    from . import hosting

    if args.local:
        raise UserError("a local endpoint lives as long as its `imgclf deploy --local`: "
                        "stop that (Ctrl-C) to delete it")
    print(f"deleted {hosting.delete(_target(args), args.endpoint_name)}")


def cmd_transform(args) -> None:
    from . import datasets, hosting

    target = _target(args)
    output = args.output_path or (_default_local_output(args) if target.local else None)
    if not output:
        raise UserError("transform needs --output-path (an S3 prefix)")
    data = datasets.local_uri(args.data) if target.local else args.data
    out = hosting.transform(target, _image_uri(args), _model_data(args, target), data, output,
                            instance_type=args.instance_type, instance_count=args.instance_count,
                            wait=not args.no_wait, **hosting_flags.transform_options(args))
    print(f"transform output: {out}")


# ---------------------------------------------------------------------------------------------
# shared option handling


def _target(args):
    from .session import target

    return target(args.local, region=args.region, role=args.role,
                  **({"container_root": args.local_root, "serving_port": args.serving_port, "gpu": args.local_gpu}
                     if args.local else {}))


def _image_uri(args) -> str:
    uri = args.image_uri or os.environ.get(IMAGE_URI_ENV)
    if not uri:
        raise UserError(f"no image: give --image-uri or set ${IMAGE_URI_ENV} (ECR URI, or a local tag with --local)")
    return uri


def _default_local_output(args) -> str:
    return Path(args.local_root or ".", "imgclf-output").resolve().as_uri()


def _job_spec(args, target):
    from .training import JobSpec

    hyperparameters = {}
    if getattr(args, "best_trial", None):  # the final model: the best trial's values, FINAL_EPOCHS epochs
        from ..hpo import FINAL_EPOCHS
        from .tuning import read_best

        hyperparameters = {**read_best(Path(args.best_trial)), "epochs": FINAL_EPOCHS}
    hyperparameters.update({name: getattr(args, dest) for name, dest in _HP_DESTS.items()
                            if getattr(args, dest) is not None})
    if args.features:
        hyperparameters["features"] = True
    output = args.output_path or (_default_local_output(args) if target.local else None)
    return JobSpec(image_uri=_image_uri(args), hyperparameters=hyperparameters, instance_type=args.instance_type,
                   instance_count=args.instance_count, output_path=output, checkpoint_s3_uri=args.checkpoint_s3_uri,
                   spot=args.spot, max_run=args.max_run, max_wait=args.max_wait, volume_size=args.volume_size)


def _inputs(args, target) -> dict[str, str]:
    from . import datasets

    extra = dict(training=args.training, validation=args.validation, test=args.test,
                 pretrained=args.pretrained_weights, features=args.features)
    if target.local:
        extra = {k: datasets.local_uri(v) for k, v in extra.items() if v}
    if not args.data:
        return datasets.channels(None, **extra)
    if args.data.startswith("s3://"):
        return datasets.channels(args.data, datasets.s3_splits(args.data, target.session.boto_session), **extra)
    root = Path(args.data.removeprefix("file://"))
    splits = datasets.check_layout(root)
    return datasets.channels(datasets.local_uri(str(root)), splits, **extra)


def _model_data(args, target) -> str:
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


_HP_DESTS: dict[str, str] = {}  # hyperparameter name -> argparse dest, filled by get_args_parser


def get_args_parser() -> argparse.ArgumentParser:
    from ..hyperparameters import HYPERPARAMETERS

    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where to run")
    where.add_argument("--local", action="store_true",
                       help="SageMaker local mode: Docker Compose on this machine, file:// data, no AWS account")
    where.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    where.add_argument("--role", help="execution role ARN (default: $SAGEMAKER_ROLE, or the notebook's role)")
    where.add_argument("--local-root", help="local mode: folder for the SDK's job folders and default output")
    where.add_argument("--serving-port", type=int, default=8080, help="local mode: port of a local endpoint")
    where.add_argument("--local-gpu", action="store_true", help="local mode: give the containers this machine's GPUs")

    image = argparse.ArgumentParser(add_help=False)
    image.add_argument("--image-uri", help=f"the image (default: ${IMAGE_URI_ENV})")

    instances = argparse.ArgumentParser(add_help=False)
    instances.add_argument("--instance-type", default="ml.m5.large")
    instances.add_argument("--instance-count", type=int, default=1)

    model_source = argparse.ArgumentParser(add_help=False)
    model_source.add_argument("--model-data", help="model.tar.gz URI (s3://, or a path with --local)")
    model_source.add_argument("--training-job", help="take the model artifact of this training job")

    job = argparse.ArgumentParser(add_help=False)
    data = job.add_argument_group("data (channels)")
    data.add_argument("--data", help="data root with train/ [valid/ test/]: s3:// prefix, or a folder with --local")
    data.add_argument("--training", help="training channel URI (overrides --data)")
    data.add_argument("--validation", help="validation channel URI")
    data.add_argument("--test", help="test channel URI")
    data.add_argument("--pretrained-weights", help="pretrained channel URI: a folder with <arch>.pth")
    data.add_argument("--features", help="features channel URI: the model.tar.gz (or folder) of `imgclf features`; "
                                         "sets features=true, so a frozen backbone's head trains on it")
    res = job.add_argument_group("job")
    res.add_argument("--instance-type", default="ml.g4dn.xlarge")
    res.add_argument("--instance-count", type=int, default=1, help="more than one trains distributed (DDP)")
    res.add_argument("--volume-size", type=int, default=30, help="GB of disk per instance")
    res.add_argument("--output-path", help="where model.tar.gz goes (default: the session bucket; --local: "
                                           "imgclf-output/ under --local-root or here)")
    res.add_argument("--checkpoint-s3-uri", help="checkpoints synced here, a restarted job resumes from them")
    res.add_argument("--spot", action="store_true", help="managed spot training (use with --checkpoint-s3-uri)")
    res.add_argument("--max-run", type=int, default=24 * 60 * 60, help="seconds")
    res.add_argument("--max-wait", type=int, help="spot: seconds to wait for capacity, run time included")
    res.add_argument("--no-wait", action="store_true", help="start the job and return")
    hps = job.add_argument_group("hyperparameters (sent to the job; defaults are the image's)")
    for hp in HYPERPARAMETERS:  # checked by the job's own table before a job starts
        if hp.name in ("features", "extract-features"):  # set by --features and `imgclf features`
            continue
        _HP_DESTS[hp.name] = "hp_" + hp.dest
        hps.add_argument(f"--{hp.name}", dest=_HP_DESTS[hp.name], metavar="VALUE", help=hp.help or None)

    p = argparse.ArgumentParser(prog="imgclf", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", parents=[common], help="fetch, check or upload a data set")
    d.add_argument("action", choices=("fetch", "check", "upload"))
    d.add_argument("path", help="fetch: destination folder; check, upload: the data root")
    d.add_argument("s3_uri", nargs="?", help="upload: destination s3://bucket/prefix")
    d.add_argument("--url", default=None, help="fetch: archive URL (default: the dog-breed data set)")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", parents=[common, image, job], help="run a training job")
    t.add_argument("--best", dest="best_trial", metavar="BEST_JSON",
                   help="train the final model with a tuner's best trial (best.json): its hyperparameters, "
                        "15 epochs unless --epochs; flags given override")
    t.add_argument("--sagemaker-debugger", action="store_true",
                   help="also run SageMaker Debugger's rule containers and ProfilerReport on AWS (the image evaluates "
                        "the same rules and writes its own report in every job)")
    t.set_defaults(func=cmd_train)

    f = sub.add_parser("features", parents=[common, image, job],
                       help="compute a frozen backbone's features once, for the features channel of later jobs")
    f.set_defaults(func=cmd_features)

    tu = sub.add_parser("tune", parents=[common, image, job], help="tune over the search space: a SageMaker "
                                                                   "tuning job, or with --local the Optuna tuner")
    tu.add_argument("--max-jobs", type=int, default=20, help="trials (with --local: finished trials)")
    tu.add_argument("--max-parallel-jobs", type=int, default=2)
    tu.add_argument("--strategy", default="Bayesian", help="Bayesian, Random, Hyperband (resources: epochs) or Grid")
    tu.add_argument("--early-stopping", choices=("Auto", "Off"), help="default: Auto, Off with Hyperband")
    tu.add_argument("--warm-start", action="append", metavar="TUNING_JOB",
                    help="start from the trials of an earlier tuning job (repeat for up to 5)")
    tu.add_argument("--warm-start-type", default="IdenticalDataAndAlgorithm",
                    choices=("IdenticalDataAndAlgorithm", "TransferLearning"))
    tu.add_argument("--tuner-seed", type=int, help="the tuner's random seed (with --local: the TPE sampler's, "
                                                   "default 0)")
    tu.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"),
                    help="--local: stop trials whose per-epoch objective lags")
    tu.add_argument("--no-features", action="store_true",
                    help="--local: push every image through the backbone in every trial")
    tu.add_argument("--best", metavar="TUNING_JOB", help="only show the best trial of this tuning job")
    tu.add_argument("--best-json", metavar="FILE", help="where the best trial goes (default: <tuning job>.best.json)")
    tu.set_defaults(func=cmd_tune)

    de = sub.add_parser("deploy", parents=[common, image, instances, model_source], help="create an endpoint")
    de.add_argument("--endpoint-name")
    de.add_argument("--serverless-memory", type=int, metavar="MB", help="serverless endpoint with this memory")
    de.add_argument("--serverless-concurrency", type=int, default=5)
    de.add_argument("--multi-model", metavar="S3_PREFIX", help="multi-model endpoint over the model.tar.gz here")
    hosting_flags.add_deploy_flags(de)
    de.set_defaults(func=cmd_deploy)

    i = sub.add_parser("invoke", parents=[common], help="send image files to an endpoint, print top-k")
    i.add_argument("endpoint_name")
    i.add_argument("images", nargs="+")
    i.add_argument("--top-k", type=int, default=3)
    i.add_argument("--target-model", help="multi-model endpoint: the model.tar.gz (relative to its prefix)")
    i.set_defaults(func=cmd_invoke)

    de = sub.add_parser("delete", parents=[common], help="delete an endpoint, its config and its models")
    de.add_argument("endpoint_name")
    de.set_defaults(func=cmd_delete)

    tr = sub.add_parser("transform", parents=[common, image, instances, model_source],
                        help="batch transform: classify every image under a prefix")
    tr.add_argument("--data", required=True, help="S3 prefix of images (a folder with --local)")
    tr.add_argument("--output-path", help="where <image>.out answers go")
    tr.add_argument("--no-wait", action="store_true")
    hosting_flags.add_transform_flags(tr)
    tr.set_defaults(func=cmd_transform)
    return p


if __name__ == "__main__":
    main()
