"""`imgclf train` and `imgclf features` (a training job with extract-features=true)."""
from __future__ import annotations

from ...hpo import FINAL_EPOCHS
from ...tracking import launch as tracking
from ...train.hyperparameters import EXTRACT_FEATURES
from .. import account, options


def add_parser(sub, parents: options.Parents) -> None:
    job = [parents.where, parents.image, parents.job]
    t = sub.add_parser("train", parents=job, help="run a training job")
    t.add_argument("--best", dest="best_trial", metavar="BEST_JSON",
                   help="train the final model with a tuner's best trial (best.json): its hyperparameters, "
                        f"{FINAL_EPOCHS} epochs unless --epochs; flags given override (default: none)")
    t.add_argument("--sagemaker-debugger", action="store_true",
                   help="also run SageMaker Debugger's rule containers and ProfilerReport on AWS (the image evaluates "
                        "the same rules and writes its own report in every job) (default: off)")
    t.add_argument("--input-mode", choices=("File", "FastFile"), help="FastFile: stream files from S3 as read (default: File)")
    t.add_argument("--distribution", choices=("FullyReplicated", "ShardedByS3Key"),
                   help="ShardedByS3Key: each instance gets its own share of the training shards "
                        "(default: FullyReplicated)")
    account.add_flags(t, warm_pool=True)
    t.set_defaults(func=run_train)

    f = sub.add_parser("features", parents=job,
                       help="compute a frozen backbone's features once, for the features channel of later jobs")
    account.add_flags(f, warm_pool=True)
    f.set_defaults(func=run_features)


def run_train(args) -> None:
    from sagemaker.estimator import Estimator

    from ..datasets import sdk_inputs
    from ..training import estimator_kwargs, train

    target = options.target(args)
    spec = options.job_spec(args, target)
    kwargs = estimator_kwargs(spec, target)
    if args.sagemaker_debugger:
        from .. import debugger

        kwargs.update(debugger.estimator_kwargs(target, spec.hyperparameters))
    kwargs.update(tracking.estimator_kwargs(args, spec.image_uri))
    inputs = sdk_inputs(options.inputs(args, target), args.input_mode, args.distribution)
    result = train(Estimator(**kwargs), inputs, wait=not args.no_wait)
    print(f"model artifact: {result}" if not args.no_wait else f"training job: {result}")


def run_features(args) -> None:
    """An extract-features job: its model.tar.gz is the features channel of later jobs."""
    from ..training import estimator, train

    target = options.target(args)
    spec = options.job_spec(args, target)
    spec.hyperparameters[EXTRACT_FEATURES] = True
    spec.base_job_name = "imgclf-features"
    result = train(estimator(spec, target), options.inputs(args, target), wait=not args.no_wait)
    if args.no_wait:
        print(f"training job: {result}")
    else:
        print(f"features: {result}\n(give it to the jobs of this data, arch, weights and image size: "
              f"imgclf tune --features-data {result} ...)")
