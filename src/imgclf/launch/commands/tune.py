"""`imgclf tune`: a SageMaker tuning job, or with --local the Optuna tuner in one container."""
from __future__ import annotations

from pathlib import Path

from ...names import DEFAULT_PRUNER, PRUNERS, UserError
from ...tracking import launch as tracking
from .. import account, options


def add_parser(sub, parents: options.Parents) -> None:
    p = sub.add_parser("tune", parents=[parents.where, parents.image, parents.job],
                       help="tune over the search space: a SageMaker tuning job, or with --local the Optuna tuner")
    p.add_argument("--max-jobs", type=int, default=20, help="trials (with --local: finished trials) (default: 20)")
    p.add_argument("--max-parallel-jobs", type=int, default=2, help="trials at a time (default: 2)")
    p.add_argument("--strategy", default="Bayesian", help="Bayesian, Random, Hyperband (resources: epochs) or Grid (default: Bayesian)")
    p.add_argument("--early-stopping", choices=("Auto", "Off"), help="default: Auto, Off with Hyperband")
    p.add_argument("--warm-start", action="append", metavar="TUNING_JOB",
                   help="start from the trials of an earlier tuning job (repeat for up to 5; default: none)")
    p.add_argument("--warm-start-type", default="IdenticalDataAndAlgorithm",
                   choices=("IdenticalDataAndAlgorithm", "TransferLearning"),
                   help="how the earlier trials relate (default: IdenticalDataAndAlgorithm)")
    p.add_argument("--tuner-seed", type=int, help="the tuner's random seed (with --local: the TPE sampler's, "
                                                  "default 0)")
    p.add_argument("--pruner", default=DEFAULT_PRUNER, choices=PRUNERS,
                   help=f"--local: stop trials whose per-epoch objective lags (default: {DEFAULT_PRUNER})")
    p.add_argument("--no-features", action="store_true",
                   help="--local: push every image through the backbone in every trial (default: a frozen "
                        "backbone's features computed once)")
    p.add_argument("--best", metavar="TUNING_JOB", help="only show the best trial of this tuning job (default: run a search)")
    p.add_argument("--best-json", metavar="FILE", help="where the best trial goes (default: <tuning job>.best.json)")
    account.add_flags(p)  # no warm pool: a tuning job's request has no KeepAlivePeriodInSeconds
    p.set_defaults(func=run)


def run(args) -> None:
    from .. import tuning

    target = options.target(args)
    if args.best:
        if target.local:
            raise UserError("--best reads a SageMaker tuning job; a local search writes best.json when it ends")
        _show_best(tuning.best(args.best, target), args.best_json or f"{args.best}.best.json")
        return
    if target.local:
        _local_tune(args, tuning)
        return
    spec = options.job_spec(args, target)
    tuner = tuning.tuner(spec, target, max_jobs=args.max_jobs, max_parallel_jobs=args.max_parallel_jobs,
                         strategy=args.strategy, early_stopping=args.early_stopping,
                         warm_start=args.warm_start or (), warm_start_type=args.warm_start_type, seed=args.tuner_seed)
    parent_run = tracking.configure_tuner(tuner, args)
    tuner.fit(options.inputs(args, target), wait=False)
    name = tuner.latest_tuning_job.name
    print(f"tuning job: {name}")
    if not args.no_wait:
        tuner.wait()
        tracking.end_parent_run(args, parent_run)
        _show_best(tuning.best(name, target), args.best_json or f"{name}.best.json")


def _show_best(best, path) -> None:
    from ..tuning import write_best

    print(best.describe())
    print(f"best trial written to {write_best(best.to_json(), Path(path))}; "
          f"final model: imgclf train --best {path} --data ...")


def _local_tune(args, tuning) -> None:
    """The Optuna tuner in one container: trials in turn, heads on cached features, resumable."""
    if not args.data or args.training or args.validation or args.test or args.features_data:
        raise UserError("a local search takes its images from --data (a folder with train/ [valid/ test/]); "
                        "it computes the features itself")
    if args.strategy not in ("Bayesian", None) or args.warm_start:
        raise UserError("a local search is Optuna's TPE with --pruner; --strategy and --warm-start are "
                        "SageMaker's")
    fixed = dict(options.job_spec(args, options.target(args)).hyperparameters)
    output = Path(args.output_path.removeprefix("file://")) if args.output_path else \
        Path(args.local_root or ".") / "imgclf-tuning"
    best = tuning.local_search(options.image_uri(args), Path(args.data.removeprefix("file://")), output,
                               trials=args.max_jobs, pruner=args.pruner, fixed=fixed, features=not args.no_features,
                               seed=args.tuner_seed or 0, gpu=args.local_gpu,
                               docker_args=tracking.docker_flags(args))
    print(f"best trial: {output / 'best.json'} ({best['objective']['metric']}={best['objective']['value']})")
