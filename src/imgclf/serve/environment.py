"""The serving environment: SAGEMAKER_* variables (as sagemaker-inference names them) and our own
IMGCLF_* settings, read once into a `ServingEnvironment`.

The server reads it to configure multi-model-server; each model worker reads it again from the
environment it inherits, so flags given to `imgclf-serve` reach the workers as variables.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sagemaker_inference import parameters as sm

DEFAULT_BASE_DIR = "/opt/ml"
MODEL_DIR_ENV = "SM_MODEL_DIR"  # outside a container: the artifact that imgclf-train wrote
BATCH_SIZE_ENV = "IMGCLF_BATCH_SIZE"
MAX_BATCH_DELAY_ENV = "IMGCLF_MAX_BATCH_DELAY_MS"
TOP_K_ENV = "IMGCLF_TOP_K"
TORCH_THREADS_ENV = "IMGCLF_TORCH_THREADS"
PRECISION_ENV = "IMGCLF_PRECISION"
MAX_IMAGE_PIXELS_ENV = "IMGCLF_MAX_IMAGE_PIXELS"
INT8_MIN_AGREEMENT_ENV = "IMGCLF_INT8_MIN_AGREEMENT"
INT8_MAX_ACCURACY_DROP_ENV = "IMGCLF_INT8_MAX_ACCURACY_DROP"
PRECISIONS = ("auto", "fp32", "bf16", "int8")
MAX_DEFAULT_THREADS = 4


def cpu_count() -> int:
    """CPUs this process may run on (the container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServingEnvironment:
    model_dir: Path
    models_dir: Path
    multi_model: bool = False
    port: int = 8080
    workers: int = 1
    torch_threads: int = 1
    batch_size: int = 8
    # how long a batch waits for more requests, which a lone request always waits: under load
    # requests queue while the worker is busy, so 1 ms kept 5 ms's images/s at concurrency 8 (0 ms
    # lost 14 %) and took 4 ms off a lone request (bench_serve)
    max_batch_delay_ms: int = 1
    top_k: int = 5
    precision: str = "auto"
    # `auto` serves int8 only if, on the validation set, it kept this share of float32's top-1
    # answers and lost at most this much accuracy (0.005: half a point)
    int8_min_agreement: float = 0.99
    int8_max_accuracy_drop: float = 0.005
    max_image_pixels: int = 40_000_000
    max_payload_bytes: int = 6 * 1024 * 1024
    response_timeout_s: int = 60
    startup_timeout_s: int = 600
    vmargs: str = "-XX:-UseContainerSupport"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServingEnvironment:
        base = Path(environ.get(sm.BASE_PATH_ENV) or DEFAULT_BASE_DIR)

        def number(var: str, default, kind=int, minimum=1, maximum=None):
            raw = environ.get(var)
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
            if value < minimum:
                raise ValueError(f"{var}={value} is below {minimum}")
            if maximum is not None and value > maximum:
                raise ValueError(f"{var}={value} is above {maximum}")
            return value

        def fraction(var: str, default: float) -> float:
            return number(var, default, float, minimum=0, maximum=1)

        cpus = cpu_count()
        # Workers x torch threads fill the CPUs, never more. Up to 4 threads share one worker, so a
        # batch runs on every core of a small instance; bigger ones get a worker per 4 cores.
        workers = number(sm.MODEL_SERVER_WORKERS_ENV, -(-cpus // MAX_DEFAULT_THREADS))
        precision = environ.get(PRECISION_ENV) or "auto"
        if precision not in PRECISIONS:
            raise ValueError(f"{PRECISION_ENV}={precision!r}; choose one of {', '.join(PRECISIONS)}")
        timeout = environ.get(sm.MODEL_SERVER_TIMEOUT_SECONDS_ENV) or environ.get(sm.MODEL_SERVER_TIMEOUT_ENV)
        return cls(
            model_dir=Path(environ.get(MODEL_DIR_ENV) or base / "model"),
            models_dir=base / "models",
            multi_model=environ.get(sm.MULTI_MODEL_ENV, "false").lower() == "true",
            port=number(sm.BIND_TO_PORT_ENV, 8080),
            workers=workers,
            torch_threads=number(TORCH_THREADS_ENV, max(1, cpus // workers)),
            batch_size=number(BATCH_SIZE_ENV, 8),
            max_batch_delay_ms=number(MAX_BATCH_DELAY_ENV, 1, minimum=0),
            top_k=number(TOP_K_ENV, 5),
            precision=precision,
            int8_min_agreement=fraction(INT8_MIN_AGREEMENT_ENV, 0.99),
            int8_max_accuracy_drop=fraction(INT8_MAX_ACCURACY_DROP_ENV, 0.005),
            max_image_pixels=number(MAX_IMAGE_PIXELS_ENV, 40_000_000),
            max_payload_bytes=number(sm.MAX_REQUEST_SIZE, 6) * 1024 * 1024,
            response_timeout_s=int(timeout) if timeout else 60,
            startup_timeout_s=number(sm.STARTUP_TIMEOUT_ENV, 600),
            vmargs=environ.get(sm.MODEL_SERVER_VMARGS) or "-XX:-UseContainerSupport",
        )
