"""The SageMaker training contract: /opt/ml paths, SM_* variables, hyperparameters, failure file.

Everything is read once into a `TrainingEnvironment` (built in `main`, injectable in tests).
Every path can be overridden by the SM_* variable that sagemaker-training defines, so the same
code runs on a laptop: `SM_CHANNEL_TRAINING=./images SM_MODEL_DIR=./model imgclf-train`. The
checkpoint folder, which sagemaker-training has no variable for, is IMGCLF_CHECKPOINT_DIR
(SM_CHECKPOINT_DIR, its earlier name, is still read).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..commandline import USER_ERROR_EXIT, verbose
from ..names import CHANNELS, SAGEMAKER_BASE_DIR, UserError  # UserError is also imported from here by the training modules

log = logging.getLogger(__name__)

BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
# given by SageMaker to a job on a warm pool (KeepAlivePeriodInSeconds): kept for the next job on the pool
WARM_POOL_CACHE_ENV = "SAGEMAKER_MANAGED_WARMPOOL_CACHE_DIRECTORY"
# Hyperparameters SageMaker itself adds (SDK script mode, tuning jobs); not ours to parse.
RESERVED_PREFIXES = ("sagemaker_", "_")
# the checkpoint folder: ours (sagemaker-training defines no such variable), then the name it had before
CHECKPOINT_DIR_ENVS = ("IMGCLF_CHECKPOINT_DIR", "SM_CHECKPOINT_DIR")


@dataclass
class TrainingEnvironment:
    model_dir: Path
    output_data_dir: Path
    output_dir: Path
    checkpoint_dir: Path
    channels: dict[str, Path]
    hyperparameters: dict[str, str] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=lambda: ["localhost"])
    current_host: str = "localhost"
    network_interface: str | None = None
    config_dir: Path | None = None  # debughookconfig.json, profilerconfig.json (imgclf.debug reads them)
    warm_pool_dir: Path | None = None

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def cache_dir(self) -> Path:
        """Where a job keeps what the next one reuses (the feature cache, an unpacked features channel):
        the warm pool's cache directory when SageMaker gives one, else the checkpoint folder, which
        checkpoint_s3_uri syncs, so that a restarted job finds them."""
        return self.warm_pool_dir or self.checkpoint_dir

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TrainingEnvironment:
        base = Path(environ.get(BASE_DIR_ENV, SAGEMAKER_BASE_DIR))

        def path(var: str, default: Path) -> Path:
            return Path(environ[var]) if environ.get(var) else default

        config_dir = path("SM_INPUT_CONFIG_DIR", base / "input" / "config")
        data_dir = path("SM_INPUT_DATA_DIR", base / "input" / "data")
        channels = {}
        for name in CHANNELS:
            p = path(f"SM_CHANNEL_{name.upper()}", data_dir / name)
            if p.exists():
                channels[name] = p
        resources = _read_json(config_dir / "resourceconfig.json") or {}
        hosts = json.loads(environ["SM_HOSTS"]) if environ.get("SM_HOSTS") else resources.get("hosts", ["localhost"])
        current = environ.get("SM_CURRENT_HOST") or resources.get("current_host", hosts[0])
        return cls(
            model_dir=path("SM_MODEL_DIR", base / "model"),
            output_data_dir=path("SM_OUTPUT_DATA_DIR", base / "output" / "data"),
            output_dir=path("SM_OUTPUT_DIR", base / "output"),
            checkpoint_dir=next((Path(environ[v]) for v in CHECKPOINT_DIR_ENVS if environ.get(v)),
                                base / "checkpoints"),
            channels=channels,
            hyperparameters=read_hyperparameters(config_dir, environ),
            hosts=sorted(hosts),
            current_host=current,
            network_interface=resources.get("network_interface_name"),
            config_dir=config_dir,
            warm_pool_dir=Path(environ[WARM_POOL_CACHE_ENV]) if environ.get(WARM_POOL_CACHE_ENV) else None,
        )


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def decode_value(value) -> str:
    """One hyperparameter value as the string argparse will type.

    SageMaker passes every value as a string, and tuning jobs JSON-quote categorical ones:
    `"\\"64\\""` and `"64"` must both become `64`, as in sagemaker-training.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value  # a plain string such as resnet50
    return value if isinstance(value, str) else json.dumps(value)


def read_hyperparameters(config_dir: Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """hyperparameters.json (as SageMaker writes it) when the file exists, else SM_HPS: the file wins,
    SM_HPS is the fallback for running without one, not an override. Reserved SageMaker keys dropped."""
    raw = _read_json(config_dir / "hyperparameters.json")
    if raw is None:
        raw = json.loads(environ.get("SM_HPS") or "{}")
    return {k: decode_value(v) for k, v in raw.items() if not k.startswith(RESERVED_PREFIXES)}


def hyperparameters_to_argv(hyperparameters: Mapping[str, str], known: set[str]) -> list[str]:
    """`--name value` arguments; unknown names are one error that lists them all."""
    unknown = sorted(set(hyperparameters) - known)
    if unknown:
        raise UserError(f"unknown hyperparameters: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return [a for k, v in sorted(hyperparameters.items()) for a in (f"--{k}", v)]


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
WRITABLE_HINT = "the model, output and checkpoint folders must be writable by the job"
DISK_HINT = "give the job more storage (the estimator's volume_size) or free the disk"
# what torch.save(obj, path) raises instead of an OSError: "... open file failed with strerror:
# Read-only file system", "File ... cannot be opened.", "... unexpected pos 950336 vs 950232"
TORCH_SHORT_WRITE = ("PytorchStreamWriter failed", "unexpected pos", "file write failed")
TORCH_CANNOT_OPEN = "cannot be opened"


def failure_reason(exc: BaseException) -> str:
    """One line for the failure file and DescribeTrainingJob's FailureReason."""
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, UserError):
        return f"ClientError: {exc}"
    if _is_out_of_memory(exc):
        return f"OutOfMemoryError: {first_line or 'out of memory'}; lower batch-size"
    code = exc.errno if isinstance(exc, OSError) else _torch_write_errno(exc, first_line)
    where = f"writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else "writing a file"
    if code in DISK_FULL:
        detail = os.strerror(code) if isinstance(exc, OSError) else first_line
        return f"DiskFullError: {where} ({detail}); {DISK_HINT}"
    if code in NOT_WRITABLE:
        detail = os.strerror(code) if isinstance(exc, OSError) else first_line
        return f"PermissionError: {where} ({detail}); {WRITABLE_HINT}"
    return f"AlgorithmError: {type(exc).__name__}: {first_line}".rstrip(": ")


def _torch_write_errno(exc: BaseException, message: str) -> int | None:
    """The errno behind torch's RuntimeError for a file it could not write, if it is one."""
    if not isinstance(exc, RuntimeError):
        return None
    for code in (*DISK_FULL, *NOT_WRITABLE):
        if f"strerror: {os.strerror(code)}" in message:
            return code
    if any(s in message for s in TORCH_SHORT_WRITE):
        return errno.ENOSPC  # a write cut short: the disk filled up under it
    if TORCH_CANNOT_OPEN in message:
        return errno.EACCES
    return None


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        return isinstance(exc, torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        return False


def run_job(job: Callable[[], int | None], failure_file: Path) -> int:
    """The one boundary of a training job: an exception becomes a failure file and a non-zero exit."""
    try:
        return job() or 0
    except SystemExit:  # --help
        raise
    except BaseException as e:
        reason = failure_reason(e)
        user_error = isinstance(e, UserError)  # one line that names the fix; a traceback only when asked for
        log.error("training failed: %s", reason, exc_info=not user_error or verbose())
        write_failure(failure_file, reason)
        return USER_ERROR_EXIT if user_error else 1


def write_failure(failure_file: Path, reason: str) -> None:
    """The first reason wins: a per-GPU process writes its own before the parent sees it exit."""
    if failure_file.exists():
        return
    try:
        failure_file.parent.mkdir(parents=True, exist_ok=True)
        failure_file.write_text(reason[:1024] + "\n")
    except OSError as e:  # never hide the original failure behind this one
        print(f"could not write {failure_file}: {e}", file=sys.stderr)
