"""`imgclf`: the SageMaker steps of the project on one command line.

    imgclf data fetch ./data                       download and unpack dogImages.zip
    imgclf data check ./data/dogImages             class folders per split, image counts
    imgclf data upload ./data/dogImages s3://bucket/dogs
    imgclf train --data s3://bucket/dogs --epochs 5 --instance-count 2
    imgclf features --data s3://bucket/dogs --arch resnet50 --image-size 224
    imgclf tune --data s3://bucket/dogs --max-jobs 20 --max-parallel-jobs 2 [--features-data s3://.../model.tar.gz]
    imgclf tune --local --data ./data --max-jobs 8 --epochs 3     the Optuna tuner in one container
    imgclf train --best best.json --data s3://bucket/dogs         the final model with the best trial's values
    imgclf deploy --training-job imgclf-2024-... [--serverless-memory 4096 | --async s3://... | --multi-model s3://...]
    imgclf invoke ENDPOINT dog.jpg --top-k 3
    imgclf delete ENDPOINT
    imgclf register --training-job imgclf-2024-... --group dogs [--approval Approved]
    imgclf deploy --model-package arn:aws:sagemaker:...:model-package/dogs/1
    imgclf monitor s3://bucket/capture/dogs --baseline s3://.../model.tar.gz --output ./monitoring [--processing]
    imgclf transform --model-data s3://.../model.tar.gz --data s3://bucket/images --output-path s3://...
                     [--max-payload-mb 20]

Every command takes --local: SageMaker local mode with Docker Compose, file:// data and output,
no AWS account. The image comes from --image-uri or $IMGCLF_IMAGE_URI. A mistake is one line and
exit status 2, its flags checked before AWS or Docker is called; --verbose adds the traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ..commandline import ArgumentParser, add_verbose, user_errors
from ..names import UserError
from . import options
from .commands import data, endpoints, monitor, register, train, tune

# in the order `imgclf --help` lists them
COMMANDS = (data, train, tune, endpoints, register, monitor)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # "not applying defaults from ...", and "will collect telemetry" printed even when opted out
    for noisy in ("sagemaker.config", "sagemaker.telemetry.telemetry_logging"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # v2 is chosen on purpose (docs/design/why-sdk-v2.md): say so once there, not on every command
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    parser = get_args_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser, whose --help lists its flags
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    start = time.perf_counter()
    from botocore.exceptions import ClientError, NoCredentialsError

    with user_errors("imgclf", args.verbose, kinds=(ClientError,)):  # its text says what AWS refused
        try:
            args.func(args)
        except NoCredentialsError as e:
            raise UserError(f"{e}: run `aws configure`, set $AWS_PROFILE, or use --local") from e
    print(f"{args.command} took {time.perf_counter() - start:.1f} s", file=sys.stderr)


def get_args_parser() -> argparse.ArgumentParser:
    """`imgclf COMMAND ...`: each command module adds its subparser over the shared option groups."""
    p = ArgumentParser(prog="imgclf", description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    sub = p.add_subparsers(dest="command", required=True)
    parents = options.Parents.build()
    for command in COMMANDS:
        command.add_parser(sub, parents)
    for command_parser in sub.choices.values():
        add_verbose(command_parser)
    p.commands = sub.choices
    return p


if __name__ == "__main__":
    main()
