"""The serving environment: SAGEMAKER_* variables (as sagemaker-inference names them, plus those
SageMaker sets for batch transform) and our own IMGCLF_* settings, read once into a
`ServingEnvironment`.

Each setting is stated once, in `SETTINGS` (its variable, default, bounds and help text, which
`imgclf-serve --help` shows), and each serving profile's limits once, in `PROFILES` (payload
in bytes, response timeout in seconds): `real-time` by default, `serverless` and `async` when
IMGCLF_SERVING_PROFILE says so, `batch` when SAGEMAKER_BATCH is true (batch transform).
`imgclf deploy` sets IMGCLF_SERVING_PROFILE for serverless and async endpoints; SageMaker itself sets
SAGEMAKER_BATCH and SAGEMAKER_MAX_PAYLOAD_IN_MB in a batch transform's container. The payload
limit, the response timeout and the model server's JVM heap are set together: bodies over
`IN_MEMORY_BYTES` are written to disk by the front and reach the worker as a file, so the JVM
never holds them and its heap stays the same for every payload limit; the heap shrinks only to fit
a small container's memory (serverless: 1 to 6 GB). Serverless gets one worker, as AWS advises.

The server reads the environment to configure multi-model-server; each model worker reads it again
from the environment it inherits, so flags given to `imgclf-serve` reach the workers as variables.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from sagemaker_inference import parameters as sm

from ..artifact.card import INT8_MAX_ACCURACY_DROP, INT8_MIN_AGREEMENT
from ..names import SAGEMAKER_BASE_DIR, cpu_count
from .profiles import PROFILE_ENV, PROFILES, MiB

MODEL_DIR_ENV = "SM_MODEL_DIR"  # outside a container: the artifact that imgclf-train wrote
BATCH_ENV = "SAGEMAKER_BATCH"  # "true" in a batch transform's container
BATCH_STRATEGY_ENV = "SAGEMAKER_BATCH_STRATEGY"  # SINGLE_RECORD or MULTI_RECORD (logged)
PRECISIONS = ("auto", "fp32", "bf16", "int8")
MAX_DEFAULT_THREADS = 4
MODEL_NAME = "model"  # the single model's name inside multi-model-server
# The front tells the worker how many invocations it has in flight, this one included: at 1 the
# request is alone and its forward may take every thread of a lone request (handler.py)
IN_FLIGHT_HEADER = "X-Imgclf-In-Flight"
# Bodies up to this size stay in memory (the front's and the JVM's); larger ones go to disk.
IN_MEMORY_BYTES = 6 * MiB
# The model server's fixed JVM heap, touched at start: its memory is bounded and flat while it
# serves (a default heap grows for minutes under load, up to a quarter of the host's memory, which
# a soak cannot tell from a leak); at most a quarter of the container's memory
JVM_HEAP_BYTES, MIN_JVM_HEAP_BYTES = 512 * MiB, 128 * MiB


@dataclass(frozen=True)
class Setting:
    """One variable: its default (None: derived, as `help` says), bounds and help text."""

    var: str
    default: int | float | str | None
    help: str
    kind: type = int
    minimum: float | None = 1
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        default = "" if self.default is None else f", default {self.default}"
        return f"{self.help} (${self.var}{default})"

    def read(self, environ: Mapping[str, str], default=None):
        """The variable's typed value, `default` (else the setting's own) when unset; ValueError
        naming the variable when it is not a valid value."""
        raw = environ.get(self.var)
        if not raw:
            return self.default if default is None else default
        if self.kind is str:
            if self.choices and raw not in self.choices:
                raise ValueError(f"{self.var}={raw!r}; choose one of {', '.join(self.choices)}")
            return raw
        try:
            value = self.kind(raw)
        except ValueError:
            raise ValueError(f"{self.var}={raw!r} is not {'an integer' if self.kind is int else 'a number'}") from None
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{self.var}={value} is below {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{self.var}={value} is above {self.maximum:g}")
        return value


SETTINGS = {  # field of ServingEnvironment -> its variable
    "port": Setting(sm.BIND_TO_PORT_ENV, 8080, "public port"),
    "profile": Setting(PROFILE_ENV, None, "serving profile (default: batch in a batch transform, else real-time)",
                       kind=str, choices=tuple(PROFILES)),
    "workers": Setting(sm.MODEL_SERVER_WORKERS_ENV, None,
                       f"model worker processes (default: one per CPU; with GPUs or several models one per "
                       f"{MAX_DEFAULT_THREADS} CPUs; serverless: 1)"),
    "torch_threads": Setting("IMGCLF_TORCH_THREADS", None, "threads per worker (default: the CPUs / workers)"),
    "batch_size": Setting("IMGCLF_BATCH_SIZE", 8, "most requests batched together"),
    # how long a batch waits for more requests, which a lone request always waits. One worker: under
    # load requests queue while it is busy, so 1 ms kept 5 ms's images/s at concurrency 8 (0 ms lost
    # 14 %). Several: a free worker takes what is queued at once (0 ms served 9 % more than 1 ms with
    # 2 workers; bench_limit)
    "max_batch_delay_ms": Setting("IMGCLF_MAX_BATCH_DELAY_MS", None,
                                  "longest wait for a batch to fill, in ms (default: 0 with several workers, 1 with "
                                  "one)", minimum=0),
    "top_k": Setting("IMGCLF_TOP_K", 5, "labels per image unless the request asks"),
    "precision": Setting("IMGCLF_PRECISION", "auto", "auto: int8 where it agrees with float32, else bfloat16 where "
                         "supported and agreeing, else float32", kind=str, choices=PRECISIONS),
    "int8_min_agreement": Setting("IMGCLF_INT8_MIN_AGREEMENT", INT8_MIN_AGREEMENT,
                                  "auto: least top-1 agreement of int8 with float32", kind=float, minimum=0, maximum=1),
    "int8_max_accuracy_drop": Setting("IMGCLF_INT8_MAX_ACCURACY_DROP", INT8_MAX_ACCURACY_DROP,
                                      "auto: most accuracy int8 may lose", kind=float, minimum=0, maximum=1),
    "max_image_pixels": Setting("IMGCLF_MAX_IMAGE_PIXELS", 40_000_000, "pixels per request (decompression bombs)"),
    # SageMaker's MaxPayloadInMB: 0 lets a batch transform send records of any size (async's limit)
    "max_payload_mb": Setting(sm.MAX_REQUEST_SIZE, None, "largest request body in MiB (default: the profile's)",
                              minimum=0),
    "response_timeout_s": Setting(sm.MODEL_SERVER_TIMEOUT_SECONDS_ENV, None,
                                  "seconds a request may take, end to end (default: the profile's)"),
    "startup_timeout_s": Setting(sm.STARTUP_TIMEOUT_ENV, 600, "seconds the model may take to load"),
}
# sagemaker-inference's older name for the timeout; seconds here, as its docstring says (MMS itself
# would read minutes: aws/sagemaker-inference-toolkit#99)
LEGACY_TIMEOUT = replace(SETTINGS["response_timeout_s"], var=sm.MODEL_SERVER_TIMEOUT_ENV)


def memory_limit_bytes(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's memory limit (cgroup v2 or v1), or None when it has none."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            raw = (root / name).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 says "no limit" with a huge number
            return int(raw)
        return None
    return None


def jvm_heap_bytes(memory_bytes: int | None) -> int:
    """The JVM heap for a container with this much memory."""
    if memory_bytes is None:
        return JVM_HEAP_BYTES
    return max(MIN_JVM_HEAP_BYTES, min(JVM_HEAP_BYTES, memory_bytes // 4 // MiB * MiB))


def _default(name: str):
    return SETTINGS[name].default


def gpu_count(dev: Path = Path("/dev")) -> int:
    """The NVIDIA GPUs this container was given (their device files: no driver library needed)."""
    return len([p for p in dev.glob("nvidia[0-9]*") if p.name[6:].isdigit()])


@dataclass(frozen=True)
class ServingEnvironment:
    model_dir: Path
    models_dir: Path
    multi_model: bool = False
    profile: str = "real-time"
    port: int = _default("port")
    workers: int = 1
    torch_threads: int = 1
    lone_threads: int = 1  # a request that arrives alone: up to this many threads for its forward
    batch_size: int = _default("batch_size")
    max_batch_delay_ms: int = 1
    top_k: int = _default("top_k")
    precision: str = _default("precision")
    int8_min_agreement: float = _default("int8_min_agreement")
    int8_max_accuracy_drop: float = _default("int8_max_accuracy_drop")
    max_image_pixels: int = _default("max_image_pixels")
    max_payload_bytes: int = PROFILES["real-time"].max_payload_bytes
    response_timeout_s: int = PROFILES["real-time"].response_timeout_s
    startup_timeout_s: int = _default("startup_timeout_s")
    jvm_heap_bytes: int = JVM_HEAP_BYTES
    vmargs: str = "-XX:-UseContainerSupport"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, memory_bytes: int | None = None) -> ServingEnvironment:
        """The environment from these variables; `memory_bytes` defaults to the cgroup's limit."""
        base = Path(environ.get(sm.BASE_PATH_ENV) or SAGEMAKER_BASE_DIR)
        read = {name: setting.read(environ) for name, setting in SETTINGS.items()}
        profile = read["profile"] or ("batch" if environ.get(BATCH_ENV, "").lower() == "true" else "real-time")
        limits = PROFILES[profile]
        payload_mb = read["max_payload_mb"]
        payload = (limits.max_payload_bytes if payload_mb is None
                   else payload_mb * MiB or PROFILES["async"].max_payload_bytes)
        cpus = cpu_count()
        # Workers x threads fill the CPUs, never more. On CPUs a worker per core, one thread each:
        # requests that come together run side by side, no thread waiting on another's (on 2 cores
        # 2 x 1 served 13-23 % more than 1 x 2: bench_limit), and a request that arrives alone still
        # gets up to 4 threads (lone_threads). With GPUs, a worker per 4 CPUs batches for the GPU;
        # so it does for each model of a multi-model endpoint, whose memory is shared by many models.
        multi_model = environ.get(sm.MULTI_MODEL_ENV, "false").lower() == "true"
        if read["workers"]:
            workers = read["workers"]
        elif profile == "serverless":
            workers = 1
        else:
            workers = -(-cpus // MAX_DEFAULT_THREADS) if multi_model or gpu_count() else cpus
        threads = read["torch_threads"] or max(1, cpus // workers)
        delay = read["max_batch_delay_ms"]
        return cls(
            model_dir=Path(environ.get(MODEL_DIR_ENV) or base / "model"),
            models_dir=base / "models",
            multi_model=multi_model,
            profile=profile,
            workers=workers,
            torch_threads=threads,
            lone_threads=max(threads, min(cpus, MAX_DEFAULT_THREADS)),
            max_batch_delay_ms=int(workers == 1) if delay is None else delay,
            max_payload_bytes=payload,
            response_timeout_s=read["response_timeout_s"] or LEGACY_TIMEOUT.read(environ, limits.response_timeout_s),
            jvm_heap_bytes=jvm_heap_bytes(memory_bytes if memory_bytes is not None else memory_limit_bytes()),
            vmargs=environ.get(sm.MODEL_SERVER_VMARGS) or cls.vmargs,
            **{name: read[name] for name in ("port", "batch_size", "top_k", "precision",
                                             "int8_min_agreement", "int8_max_accuracy_drop", "max_image_pixels",
                                             "startup_timeout_s")},
        )

    def describe(self) -> str:
        """The limits in force, for the start-up log."""
        return (f"profile {self.profile}: payload up to {self.max_payload_bytes} bytes, response timeout "
                f"{self.response_timeout_s} s, JVM heap {self.jvm_heap_bytes // MiB} MiB, {self.workers} workers x "
                f"{self.torch_threads} threads ({self.lone_threads} for a request alone), batch delay "
                f"{self.max_batch_delay_ms} ms")
