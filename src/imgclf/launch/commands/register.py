"""`imgclf register`: a trained model as a new version of a model package group."""
from __future__ import annotations

import os

from ...names import UserError
from .. import options


def add_parser(sub, parents: options.Parents) -> None:
    from ..registry import APPROVALS, DEFAULT_APPROVAL, INSTANCE_TYPES

    p = sub.add_parser("register", parents=[parents.where, parents.image, parents.model_source],
                       help="put a trained model in the model registry (a model package, with its evaluation)")
    p.add_argument("--group", required=True, help="model package group, created if missing")
    p.add_argument("--approval", choices=APPROVALS, default=DEFAULT_APPROVAL,
                   help=f"the package's approval status (default: {DEFAULT_APPROVAL})")
    p.add_argument("--instance-types", metavar="TYPE[,TYPE]", default=",".join(INSTANCE_TYPES),
                   help="instance types the package may be deployed and transformed on (default: %(default)s)")
    p.add_argument("--description", help="(default: the model.tar.gz URI)")
    p.add_argument("--tags", dest="package_tags", metavar="KEY=VALUE[,KEY=VALUE]",
                   help="tags on the package and on a group it creates (default: none)")
    p.set_defaults(func=run)


def run(args) -> None:
    from .. import registry
    from ..account import AccountSettings, parse_tags

    settings = AccountSettings(tags=parse_tags(args.package_tags))  # checked before AWS is called
    instance_types = tuple(t.strip() for t in args.instance_types.split(",") if t.strip())
    if not instance_types:
        raise UserError("--instance-types: give at least one instance type")
    target = options.target(args)
    training_image = None
    if args.model_data:
        model_data = args.model_data
    elif args.training_job:
        model_data, training_image = registry.training_job_model(target, args.training_job)
    else:
        raise UserError("give --training-job NAME or --model-data s3://.../model.tar.gz")
    image_uri = args.image_uri or os.environ.get(options.IMAGE_URI_ENV) or training_image
    if not image_uri:
        raise UserError(f"no image: give --image-uri or set ${options.IMAGE_URI_ENV}")
    registered = registry.register(target, model_data, args.group, image_uri, approval=args.approval,
                                   instance_types=instance_types, description=args.description, account=settings)
    print(f"model metrics: {registered.evaluation_uri or 'none (no evaluation.json in the archive)'}")
    print(f"model package: {registered.arn} ({args.approval})", flush=True)
