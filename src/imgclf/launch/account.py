"""What locked-down accounts ask of every job and endpoint: a VPC (subnets, security groups),
network isolation, KMS keys for volumes and outputs, cost-allocation tags, and for training jobs a
warm pool. One group of flags (`add_flags`), read once into `AccountSettings` (`from_args`, where
bad values fail, before any AWS call), which gives each SDK object its keyword arguments.
docs/launcher.md has the table: each flag, the request field it sets.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from ..names import UserError

log = logging.getLogger("imgclf.launch")

MAX_KEEP_ALIVE_S = 3600  # SageMaker's limit for KeepAlivePeriodInSeconds
MAX_TAGS = 50  # per SageMaker resource
MAX_TAG_KEY, MAX_TAG_VALUE = 128, 256
ID_PREFIXES = {"subnets": "subnet-", "security_group_ids": "sg-"}


def add_flags(parser: argparse.ArgumentParser, *, warm_pool: bool = False) -> None:
    """The account's group of flags on a job command or deploy; `warm_pool` for training jobs."""
    g = parser.add_argument_group("account (VPC, isolation, encryption, tags; AWS only)")
    g.add_argument("--subnets", metavar="ID[,ID]",
                   help="run in these VPC subnets, with --security-group-ids (default: no VPC)")
    g.add_argument("--security-group-ids", metavar="ID[,ID]",
                   help="security groups of the containers' network interfaces in the VPC (default: none)")
    g.add_argument("--network-isolation", action="store_true",
                   help="no network in the container: no call leaves it, SageMaker alone moves data and "
                        "artifacts (default: off)")
    g.add_argument("--volume-kms-key", metavar="KEY",
                   help="KMS key (ID, ARN or alias) of the instances' storage volumes (default: SageMaker's)")
    g.add_argument("--output-kms-key", metavar="KEY",
                   help="KMS key of what is written to S3: the model artifact, transform output; on deploy, "
                        "captured data and asynchronous answers (default: the bucket's encryption)")
    g.add_argument("--tags", metavar="KEY=VALUE[,KEY=VALUE]",
                   help="cost-allocation tags on the job, or the model, endpoint config and endpoint (default: none)")
    if warm_pool:
        g.add_argument("--keep-alive-seconds", type=int, metavar="N",
                       help=f"warm pool: keep the instances N seconds (up to {MAX_KEEP_ALIVE_S}) after the job for "
                            "the next one of the same instance type and count (default: 0, released at once)")


@dataclass(frozen=True)
class AccountSettings:
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    network_isolation: bool = False
    volume_kms_key: str | None = None
    output_kms_key: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    keep_alive_seconds: int | None = None

    @property
    def sdk_tags(self) -> list[dict[str, str]] | None:
        return [{"Key": k, "Value": v} for k, v in self.tags] or None

    @property
    def vpc_config(self) -> dict[str, list[str]] | None:
        if not self.subnets:
            return None
        return {"Subnets": list(self.subnets), "SecurityGroupIds": list(self.security_group_ids)}

    def estimator_kwargs(self) -> dict:
        """sagemaker's Estimator (training and tuning jobs): VpcConfig, EnableNetworkIsolation,
        ResourceConfig's VolumeKmsKeyId and KeepAlivePeriodInSeconds, OutputDataConfig's KmsKeyId, Tags."""
        kwargs = dict(subnets=list(self.subnets) or None, security_group_ids=list(self.security_group_ids) or None,
                      volume_kms_key=self.volume_kms_key, output_kms_key=self.output_kms_key, tags=self.sdk_tags,
                      keep_alive_period_in_seconds=self.keep_alive_seconds)
        if self.network_isolation:
            kwargs["enable_network_isolation"] = True
        return {k: v for k, v in kwargs.items() if v is not None}

    def model_kwargs(self) -> dict:
        """sagemaker's Model (endpoints, transform jobs): the container's VpcConfig and EnableNetworkIsolation."""
        return dict(vpc_config=self.vpc_config, enable_network_isolation=self.network_isolation)


def from_args(args) -> AccountSettings:
    """The settings the flags of `add_flags` give; a UserError names the first bad one."""
    settings = AccountSettings(
        subnets=_ids(args.subnets, "subnets"),
        security_group_ids=_ids(args.security_group_ids, "security_group_ids"),
        network_isolation=args.network_isolation,
        volume_kms_key=_key(args.volume_kms_key, "--volume-kms-key"),
        output_kms_key=_key(args.output_kms_key, "--output-kms-key"),
        tags=parse_tags(args.tags),
        keep_alive_seconds=_keep_alive(getattr(args, "keep_alive_seconds", None)),
    )
    if bool(settings.subnets) != bool(settings.security_group_ids):
        raise UserError("a VPC takes both --subnets and --security-group-ids")
    if getattr(args, "local", False):
        given = [flag for flag, value in (
            ("--subnets", settings.subnets), ("--network-isolation", settings.network_isolation),
            ("--volume-kms-key", settings.volume_kms_key), ("--output-kms-key", settings.output_kms_key),
            ("--keep-alive-seconds", settings.keep_alive_seconds)) if value]
        if given:
            raise UserError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} SageMaker: leave "
                            f"{'it' if len(given) == 1 else 'them'} out in local mode (`docker run --network none` "
                            "tries an isolated container)")
    return settings


def check(args) -> None:
    """The flags checked before AWS is called (options.check), and what they rule out said once."""
    settings = from_args(args)
    if settings.network_isolation and getattr(args, "mlflow", None):
        log.warning("network isolation: the job cannot reach MLflow at %s; it says so in one line and trains "
                    "without tracking", args.mlflow)


def parse_tags(text: str | None) -> tuple[tuple[str, str], ...]:
    """`KEY=VALUE[,KEY=VALUE]` as (key, value) pairs, checked against SageMaker's rules for tags."""
    if not text:
        return ()
    tags = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UserError(f"--tags: {item!r} is not KEY=VALUE")
        if key.lower().startswith("aws:"):
            raise UserError(f"--tags: {key!r}: the aws: prefix is AWS's own")
        if len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            raise UserError(f"--tags: {key!r}: keys take up to {MAX_TAG_KEY} characters, values {MAX_TAG_VALUE}")
        if key in dict(tags):
            raise UserError(f"--tags: {key!r} is given twice")
        tags.append((key, value))
    if len(tags) > MAX_TAGS:
        raise UserError(f"--tags: {len(tags)} tags, SageMaker takes up to {MAX_TAGS}")
    return tuple(tags)


def _ids(text: str | None, dest: str) -> tuple[str, ...]:
    if not text:
        return ()
    flag, prefix = "--" + dest.replace("_", "-"), ID_PREFIXES[dest]
    ids = tuple(i.strip() for i in text.split(","))
    wrong = [i for i in ids if not i.startswith(prefix) or len(i) == len(prefix) or " " in i]
    if wrong:
        raise UserError(f"{flag}: {', '.join(map(repr, wrong))} is not an ID like {prefix}0123456789abcdef0")
    return ids


def _key(text: str | None, flag: str) -> str | None:
    if text is not None and (not text.strip() or any(c.isspace() for c in text)):
        raise UserError(f"{flag}: {text!r} is not a KMS key ID, ARN or alias")
    return text


def _keep_alive(seconds: int | None) -> int | None:
    if seconds is not None and not 0 <= seconds <= MAX_KEEP_ALIVE_S:
        raise UserError(f"--keep-alive-seconds {seconds}: SageMaker keeps a warm pool 0 to {MAX_KEEP_ALIVE_S} s")
    return seconds or None
