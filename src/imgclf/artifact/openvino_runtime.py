"""Reading and compiling the OpenVINO IR copies of a network (export.py writes them), without
torch: the CPU image serves with this and numpy alone.

Every OpenVINO call that may start its CPU plugin is followed by `keep_signal_stack`: see signalstack.py.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .signalstack import keep_signal_stack

log = logging.getLogger(__name__)

FP32_FORMAT, INT8_FORMAT = "openvino_fp32", "openvino_int8"
FILES = {FP32_FORMAT: "model.xml", INT8_FORMAT: "model_int8.xml"}


def openvino_available(calibration: bool = False) -> bool:
    """Whether OpenVINO (to run the IR) and, for `calibration`, NNCF (to quantize) import."""
    try:
        import openvino  # noqa: F401

        if calibration:
            import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def compile_model(ov_model, *, threads: int | None = None, precision_hint: str = "f32"):
    """Compiled for this CPU. `precision_hint` f32 keeps float32 arithmetic even where the CPU has
    bf16 (OpenVINO's default there is bf16); int8 models run int8 either way. No thread pinning,
    so several model workers on one machine do not crowd onto the same cores."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "ENABLE_CPU_PINNING": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        return ov.Core().compile_model(ov_model, "CPU", config)
    finally:
        keep_signal_stack()


def read_model(path: Path):
    import openvino as ov

    return ov.Core().read_model(str(path))


def save_model(ov_model, path: Path) -> None:
    import openvino as ov

    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # the default would halve weights to fp16


def capabilities() -> list[str]:
    """What OpenVINO's CPU plugin has kernels for on this processor: "BF16", "FP16", "INT8", ..."""
    import openvino as ov

    try:
        return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    finally:
        keep_signal_stack()


def bf16_supported() -> bool:
    return "BF16" in capabilities()


def f16_supported() -> bool:
    return "FP16" in capabilities()
