"""`imgclf data fetch|check|pack|upload`."""
from __future__ import annotations

from pathlib import Path

from ...names import UserError
from ...train.shards import DEFAULT_SHARD_SIZE_MB
from .. import options


def add_parser(sub, parents: options.Parents) -> None:
    p = sub.add_parser("data", help="fetch, check, pack or upload a data set")  # no job: none of the shared flags
    p.add_argument("action", choices=("fetch", "check", "pack", "upload"))
    p.add_argument("path", help="fetch: destination folder; check, upload: the data root; pack: class folders "
                                "or a data root")
    p.add_argument("s3_uri", nargs="?", help="upload: destination s3://bucket/prefix; pack: destination folder")
    p.add_argument("--shard-size-mb", type=float, default=DEFAULT_SHARD_SIZE_MB,
                   help=f"pack: WebDataset tar shards of about this size (default: {DEFAULT_SHARD_SIZE_MB:g})")
    p.add_argument("--url", default=None, help="fetch: archive URL (default: the dog-breed data set)")
    p.add_argument("--local", action="store_true",
                   help="upload: check the folder and print the file:// URI that local mode reads instead "
                        "(default: upload to S3)")
    p.add_argument("--region", help="upload: AWS region (default: $AWS_REGION, else the AWS configuration's)")
    p.set_defaults(func=run)


def run(args) -> None:
    from .. import datasets

    if args.action == "fetch":
        root = datasets.fetch(Path(args.path), args.url or datasets.DOG_IMAGES_URL)
        print(f"data set in {root}")
        _print_layout(datasets.check_layout(root))
    elif args.action == "pack":
        if not args.s3_uri:
            raise UserError("data pack needs a destination: imgclf data pack IMAGES SHARDS_DIR")
        for name, index in datasets.pack(Path(args.path), Path(args.s3_uri), args.shard_size_mb).items():
            images = sum(index.shards.values())
            print(f"{name}: {len(index.classes)} classes, {images} images, {len(index.shards)} shards")
    elif args.action == "check":
        _print_layout(datasets.check_layout(Path(args.path)))
    elif args.local:  # upload: local mode reads the folder where it is
        datasets.check_layout(Path(args.path))
        print(datasets.local_uri(Path(args.path)))
    else:
        if not args.s3_uri:
            raise UserError("data upload needs an S3 URI: imgclf data upload DIR s3://bucket/prefix")
        from ..session import aws_session

        print(datasets.upload(Path(args.path), args.s3_uri, aws_session(args.region)))


def _print_layout(splits) -> None:
    for split in splits.values():
        print(f"{split.name}: {len(split.classes)} classes, {split.images} images")
