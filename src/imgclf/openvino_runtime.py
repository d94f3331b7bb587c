"""Reading and compiling the OpenVINO IR copies of a network (export.py writes them), without
torch: the CPU image serves with this and numpy alone.

Every OpenVINO call that may start its CPU plugin is followed by `keep_signal_stack`, because of how that
plugin treats the thread's alternate signal stack (the stack signal handlers run on; Python installs
its handlers to use it). Each plugin instance (one per `ov.Core` that compiles, NNCF makes several)
maps a stack of its own for the thread and, when it goes, puts back the one that was current when
it came, if its own is still current, and unmaps its own. Plugins that go in any order but the
reverse of the one they came in leave the thread on an unmapped stack: the next signal handled
there (a DataLoader's SIGCHLD, say) kills the process with SIGSEGV, or, once the addresses are
reused, writes its frame over the Python heap. `keep_signal_stack` gives the thread a stack of
ours for the life of the process after each such call; no plugin restores over it.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FP32_FORMAT, INT8_FORMAT = "openvino_fp32", "openvino_int8"
FILES = {FP32_FORMAT: "model.xml", INT8_FORMAT: "model_int8.xml"}
SIGNAL_STACK_BYTES = 256 * 1024  # room for a signal frame with AMX state (about 11 KB) and the handler


def openvino_available(calibration: bool = False) -> bool:
    """Whether OpenVINO (to run the IR) and, for `calibration`, NNCF (to quantize) import."""
    try:
        import openvino  # noqa: F401

        if calibration:
            import nncf  # noqa: F401
    except ImportError:
        return False
    return True


class _StackT(ctypes.Structure):  # <signal.h> stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.cache
def _signal_stack(thread: int) -> tuple[ctypes.Array, _StackT]:
    """Anonymous memory for one thread's stack, held (and so mapped) by this cache for the life of
    the process; one per thread, as two threads may handle signals at once."""
    memory = (ctypes.c_char * SIGNAL_STACK_BYTES).from_buffer(mmap.mmap(-1, SIGNAL_STACK_BYTES))
    return memory, _StackT(ctypes.addressof(memory), 0, SIGNAL_STACK_BYTES)


def keep_signal_stack() -> None:
    """Put the calling thread on an alternate signal stack that lives as long as the process (see
    the module's docstring); a no-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sigaltstack(ctypes.byref(_signal_stack(threading.get_ident())[1]), None) != 0:
        log.warning("could not set the alternate signal stack: %s", os.strerror(ctypes.get_errno()))


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


def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin has bfloat16 kernels on this processor."""
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    finally:
        keep_signal_stack()
