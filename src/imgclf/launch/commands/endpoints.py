"""`imgclf deploy`, `invoke`, `delete` and `transform`: what runs on a trained model."""
from __future__ import annotations

import signal
import threading
from pathlib import Path

from ...names import UserError
from .. import account, hosting_flags, options


def add_parser(sub, parents: options.Parents) -> None:
    serving = [parents.where, parents.image, parents.instances, parents.model_source]
    p = sub.add_parser("deploy", parents=serving, help="create an endpoint")
    p.add_argument("--endpoint-name", help="(default: imgclf-<time>)")
    p.add_argument("--serverless-memory", type=int, metavar="MB", help="serverless endpoint with this memory (default: instances)")
    p.add_argument("--serverless-concurrency", type=int, default=5,
                   help="serverless: most requests at a time (default: 5)")
    p.add_argument("--multi-model", metavar="S3_PREFIX", help="multi-model endpoint over the model.tar.gz here (default: one model)")
    p.add_argument("--model-package", metavar="ARN", help="an approved model package of the registry (`imgclf register`) "
                                                          "instead of --model-data (default: none)")
    hosting_flags.add_deploy_flags(p)
    account.add_flags(p)
    p.set_defaults(func=run_deploy)

    p = sub.add_parser("invoke", parents=[parents.where], help="send image files to an endpoint, print top-k")
    p.add_argument("endpoint_name")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3, help="labels per image (default: 3)")
    p.add_argument("--target-model", help="multi-model endpoint: the model.tar.gz (relative to its prefix; default: none)")
    p.set_defaults(func=run_invoke)

    p = sub.add_parser("delete", parents=[parents.where], help="delete an endpoint, its config, its models and its autoscaling")
    p.add_argument("endpoint_name")
    p.set_defaults(func=run_delete)

    p = sub.add_parser("transform", parents=serving, help="batch transform: classify every image under a prefix")
    p.add_argument("--data", required=True, help="S3 prefix of images (a folder with --local)")
    p.add_argument("--output-path", help="where <image>.out answers go: S3 prefix, or a folder with --local "
                                         "(default: none; with --local imgclf-output/ under --local-root or here)")
    p.add_argument("--no-wait", action="store_true", help="start the job and return (default: wait)")
    hosting_flags.add_transform_flags(p)
    account.add_flags(p)
    p.set_defaults(func=run_transform)


def run_deploy(args) -> None:
    from .. import hosting

    target = options.target(args)
    if args.model_package:  # the package names its image and model
        return _deploy_package(args, target)
    image_uri = options.image_uri(args)
    deploy_kwargs = hosting_flags.deploy_options(args, target, account.from_args(args))
    if args.multi_model:
        pred = hosting.deploy_multi_model(target, image_uri, args.multi_model, instance_type=args.instance_type,
                                          instance_count=args.instance_count, endpoint_name=args.endpoint_name,
                                          account=deploy_kwargs["account"],
                                          data_capture=deploy_kwargs.get("data_capture"))
    else:
        serverless = (hosting.serverless_config(args.serverless_memory, args.serverless_concurrency)
                      if args.serverless_memory else None)
        pred = hosting.deploy(target, image_uri, options.model_data(args, target), instance_type=args.instance_type,
                              instance_count=args.instance_count, endpoint_name=args.endpoint_name,
                              serverless=serverless, **deploy_kwargs)
    print(f"endpoint: {pred.endpoint_name}", flush=True)
    autoscaling = hosting_flags.autoscaling(args)
    if autoscaling:
        policies = hosting.autoscale(target, pred.endpoint_name, autoscaling)
        print(f"autoscaling: {autoscaling.min_instances} to {autoscaling.max_instances} instances, "
              f"{autoscaling.target_invocations} invocations per instance per minute ({', '.join(policies)})")
    if target.local:
        _serve_until_stopped(args, target, pred.endpoint_name)


def _deploy_package(args, target) -> None:
    from .. import registry

    kwargs = hosting_flags.deploy_options(args, target, account.from_args(args))
    pred = registry.deploy_package(target, args.model_package, instance_type=args.instance_type,
                                   instance_count=args.instance_count, endpoint_name=args.endpoint_name, **kwargs)
    print(f"endpoint: {pred.endpoint_name} (model package {args.model_package})", flush=True)


def _serve_until_stopped(args, target, endpoint_name: str) -> None:
    """A local endpoint is a container owned by this process: serve until interrupted, then clean up."""
    from .. import hosting

    print(f"serving on http://localhost:{args.serving_port}/invocations; "
          f"`imgclf invoke --local {endpoint_name} IMAGE` in another shell; Ctrl-C deletes it", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print(f"deleted {hosting.delete(target, endpoint_name)}")


def run_invoke(args) -> None:
    from .. import hosting

    pred = hosting.predictor(options.target(args), args.endpoint_name)
    for image in args.images:
        answer = hosting.invoke(pred, Path(image), top_k=args.top_k, target_model=args.target_model)
        print(f"{image}:\n{hosting.format_answer(answer)}")


def run_delete(args) -> None:
    from .. import hosting

    if args.local:
        raise UserError("a local endpoint lives as long as its `imgclf deploy --local`: "
                        "stop that (Ctrl-C) to delete it")
    print(f"deleted {hosting.delete(options.target(args), args.endpoint_name)}")


def run_transform(args) -> None:
    from .. import datasets, hosting

    target = options.target(args)
    output = args.output_path or (options.default_local_output(args) if target.local else None)
    if not output:
        raise UserError("transform needs --output-path (an S3 prefix)")
    data, output = (datasets.local_uri(args.data), datasets.local_uri(output)) if target.local else (args.data, output)
    out = hosting.transform(target, options.image_uri(args), options.model_data(args, target), data, output,
                            instance_type=args.instance_type, instance_count=args.instance_count,
                            account=account.from_args(args), wait=not args.no_wait,
                            **hosting_flags.transform_options(args))
    print(f"transform output: {out}")
