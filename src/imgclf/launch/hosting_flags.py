"""The launcher's flags for the serving profiles (serve/profiles.py): `imgclf deploy --async` and
`imgclf transform --max-payload-mb`; transform's `--accept`; deploy's autoscaling and data capture; and
the SDK options they become. Kept apart from hosting.py, which imports the SageMaker SDK, so that building the parser stays fast."""
from __future__ import annotations

import argparse

from ..names import UserError

CAPTURE_PERCENT = 100  # every request and answer: what monitoring reads
TRANSFORM_ACCEPTS = ("application/json", "application/json;verbose")  # the handler's answers (serve/handler.py)


def add_deploy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--async", dest="async_output", metavar="S3_PREFIX",
                        help="asynchronous endpoint: payloads up to 1 GB read from S3, answers written here "
                             "(the container serves its async profile; default: real-time)")
    parser.add_argument("--async-concurrency", type=int, metavar="N",
                        help="--async: most requests SageMaker sends one instance at a time (default: SageMaker's)")
    parser.add_argument("--autoscale", metavar="MIN:MAX",
                        help="scale the instances between MIN and MAX with Application Auto Scaling, tracking "
                             "--target-invocations (default: a fixed --instance-count)")
    parser.add_argument("--target-invocations", type=int, metavar="N",
                        help="--autoscale: requests per instance per minute to hold (no default: 60 x the "
                             "requests/s one instance serves, less some headroom)")
    parser.add_argument("--data-capture", metavar="S3_URI",
                        help="capture requests and answers (JSON answers as JSON) under this S3 prefix "
                             "(default: no capture)")
    parser.add_argument("--capture-percent", type=int, metavar="N",
                        help=f"--data-capture: the share of requests captured, 1 to 100 (default: {CAPTURE_PERCENT})")


def add_transform_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-payload-mb", type=int, metavar="MB",
                        help="largest image (record) in MB, up to 100; 0: no limit (SageMaker's default: 6)")
    parser.add_argument("--accept", choices=TRANSFORM_ACCEPTS, default=TRANSFORM_ACCEPTS[0],
                        help=f"{TRANSFORM_ACCEPTS[1]}: every class's probability per image (JumpStart's shape) "
                             "instead of the top classes (default: %(default)s)")


def check(args) -> None:
    """Deploy's flags that go together, checked before AWS is called."""
    scaling = autoscaling(args)
    serverless = getattr(args, "serverless_memory", None)
    if scaling is not None:
        if serverless:
            raise UserError("a serverless endpoint scales itself: leave out --autoscale")
        scaling.check_instance_count(args.instance_count)
    elif args.target_invocations is not None:
        raise UserError("--target-invocations is the target of --autoscale MIN:MAX: give both")
    if args.data_capture is not None and not args.data_capture.startswith("s3://"):
        raise UserError(f"--data-capture {args.data_capture!r}: give an s3:// prefix")
    if args.capture_percent is not None and (args.data_capture is None or not 1 <= args.capture_percent <= 100):
        raise UserError(f"--capture-percent {args.capture_percent}: give 1 to 100, with --data-capture")
    if args.local and (scaling or args.data_capture):
        raise UserError("--autoscale and --data-capture need SageMaker: leave them out in local mode")
    if args.output_kms_key and not (args.async_output or args.data_capture):
        raise UserError("--output-kms-key on deploy encrypts captured data (--data-capture) and asynchronous "
                        "answers (--async): give one of them")
    # what SageMaker's serverless endpoints lack: no instances in a VPC, no volume, no data capture
    unserved = [flag for flag, value in (("--subnets", args.subnets), ("--network-isolation", args.network_isolation),
                                         ("--volume-kms-key", args.volume_kms_key),
                                         ("--data-capture", args.data_capture)) if value]
    if serverless and unserved:
        raise UserError(f"serverless endpoints take no {', '.join(unserved)}: deploy on instances instead")


def autoscaling(args):
    """scaling.Autoscaling of --autoscale and --target-invocations; None without --autoscale."""
    if not args.autoscale:
        return None
    from .scaling import Autoscaling

    return Autoscaling.parse(args.autoscale, args.target_invocations)


def deploy_options(args, target, settings) -> dict:
    """hosting.deploy's keyword arguments for the flags above and the account's `settings`."""
    from . import hosting

    options = {"account": settings}
    if args.async_output:
        options["async_inference"] = hosting.async_config(args.async_output, args.async_concurrency,
                                                          kms_key=settings.output_kms_key)
    if args.data_capture:
        options["data_capture"] = hosting.data_capture_config(
            target, args.data_capture, args.capture_percent or CAPTURE_PERCENT, kms_key=settings.output_kms_key)
    return options


def transform_options(args) -> dict:
    """hosting.transform's keyword arguments for the flags above."""
    return {"max_payload_mb": args.max_payload_mb, "accept": args.accept}
