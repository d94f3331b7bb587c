"""`imgclf monitor`: drift in what an endpoint captured, here or as a SageMaker Processing job."""
from __future__ import annotations

import sys

from .. import options


def add_parser(sub, parents: options.Parents) -> None:
    from ...monitor.cli import add_arguments
    from ..monitoring import INSTANCE_TYPE

    p = sub.add_parser("monitor", parents=[parents.where, parents.image],
                       help="compare an endpoint's captured traffic with the model's baseline (drift)")
    add_arguments(p)
    g = p.add_argument_group("as a SageMaker Processing job")
    g.add_argument("--processing", action="store_true",
                   help="run in a Processing job with the image (CAPTURE, MODEL, GT and --output in S3; with "
                        "--local, folders here and the job in Docker) (default: here)")
    g.add_argument("--processing-instance-type", default=INSTANCE_TYPE, help="(default: %(default)s)")
    g.add_argument("--no-wait", action="store_true", help="start the job and return (default: wait, logs shown)")
    p.set_defaults(func=run)


def run(args) -> None:
    if not args.processing:
        from ...monitor.cli import run as monitor

        code = monitor(args)
        if code:
            sys.exit(code)
        return
    from ...monitor.cli import DRIFT_EXIT
    from ..monitoring import local_drift, processing_job

    target = options.target(args)
    name = processing_job(target, options.image_uri(args), args.capture, args.baseline, args.output,
                          ground_truth=args.ground_truth, fail_on_drift=args.fail_on_drift,
                          instance_type=args.processing_instance_type, wait=not args.no_wait)
    print(f"processing job: {name}; results under {args.output}")
    if target.local and args.fail_on_drift and local_drift(args.output):  # the job has run: its verdict is here
        sys.exit(DRIFT_EXIT)
