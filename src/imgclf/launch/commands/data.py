"""`imgclf data fetch|check|upload`."""
from __future__ import annotations

from pathlib import Path

from ...names import UserError
from .. import options


def add_parser(sub, parents: options.Parents) -> None:
    p = sub.add_parser("data", parents=[parents.where], help="fetch, check or upload a data set")
    p.add_argument("action", choices=("fetch", "check", "upload"))
    p.add_argument("path", help="fetch: destination folder; check, upload: the data root")
    p.add_argument("s3_uri", nargs="?", help="upload: destination s3://bucket/prefix")
    p.add_argument("--url", default=None, help="fetch: archive URL (default: the dog-breed data set)")
    p.set_defaults(func=run)


def run(args) -> None:
    from .. import datasets

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
        print(datasets.upload(Path(args.path), args.s3_uri, options.target(args).session))


def _print_layout(splits) -> None:
    for split in splits.values():
        print(f"{split.name}: {len(split.classes)} classes, {split.images} images")
