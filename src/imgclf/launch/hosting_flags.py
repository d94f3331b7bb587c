"""The launcher's flags for the serving profiles (serve/profiles.py): `imgclf deploy --async` and
`imgclf transform --max-payload-mb`, and the SDK options they become. Kept apart from hosting.py,
which imports the SageMaker SDK, so that building the parser stays fast."""
from __future__ import annotations

import argparse


def add_deploy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--async", dest="async_output", metavar="S3_PREFIX",
                        help="asynchronous endpoint: payloads up to 1 GB read from S3, answers written here "
                             "(the container serves its async profile)")
    parser.add_argument("--async-concurrency", type=int, metavar="N",
                        help="--async: most requests SageMaker sends one instance at a time (default: SageMaker's)")


def add_transform_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-payload-mb", type=int, metavar="MB",
                        help="largest image (record) in MB, up to 100; 0: no limit (SageMaker's default: 6)")


def deploy_options(args) -> dict:
    """hosting.deploy's keyword arguments for the flags above."""
    if not args.async_output:
        return {}
    from . import hosting

    return {"async_inference": hosting.async_config(args.async_output, args.async_concurrency)}


def transform_options(args) -> dict:
    """hosting.transform's keyword arguments for the flags above."""
    return {"max_payload_mb": args.max_payload_mb}
