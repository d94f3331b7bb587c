"""The int8 arithmetic of this CPU's OpenVINO kernels, and running an IR with the other kind.

x86 CPUs multiply int8 activations (u8) by int8 weights (s8) in one of two ways (oneDNN):

    "vnni"  AVX-512 VNNI, AVX-VNNI, AMX: every product summed exactly in int32
    "avx2"  AVX2, and AVX-512 without VNNI: pairs of products summed in int16 first, which can
            saturate (NNCF narrows the first layer's weights against it; later layers can still clip)

So one int8 IR can keep different shares of float32's answers on the two: a ResNet50 kept 99.33 %
of 300 with "vnni" kernels and 98.67 % with "avx2" ones. Training measures the int8 copy with its
own kernels and, on a "vnni" CPU, with "avx2" ones in a child process capped by oneDNN's
ONEDNN_MAX_CPU_ISA=AVX2 (`AVX2Runner`, export.py); model.json records each, and serving reads the
one for its CPU (serve/precision.py). On such a CPU accuracy control runs with "avx2" kernels too
(quantize.py). Other machines (arm64) are their own kind, named by `platform`.
Torch-free: the CPU image serves with this.
"""
from __future__ import annotations

import os
import platform
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

VNNI, AVX2 = "vnni", "avx2"
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # /proc/cpuinfo names of exact int8 sums
# ONEDNN_MAX_CPU_ISA values that leave oneDNN (and OpenVINO's CPU plugin) without those
CAPS_WITHOUT_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}
CAP_ENV = "ONEDNN_MAX_CPU_ISA"
AVX2_ENVIRON = {CAP_ENV: "AVX2"}  # what a child process adds to run with "avx2" kernels on any x86 CPU


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def int8_kernels(flags: set[str] | None = None, environ=os.environ) -> str:
    """"vnni" or "avx2" on x86 (oneDNN's cap in `environ` counted), else the machine's name."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return machine
    flags = cpu_flags() if flags is None else flags
    capped = environ.get(CAP_ENV, "").upper() in CAPS_WITHOUT_VNNI
    return VNNI if flags & VNNI_FLAGS and not capped else AVX2


# -- a child process that runs an IR with AVX2 kernels: float32 pixel batches in, logits out over its pipes.
# Each array is framed as its rank, its shape and its raw float32 bytes.

def write_array(stream, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.float32)
    stream.write(struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape))
    stream.write(array.tobytes())
    stream.flush()


def read_exactly(stream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def read_array(stream) -> np.ndarray:
    (ndim,) = struct.unpack("<I", read_exactly(stream, 4))
    shape = struct.unpack(f"<{ndim}I", read_exactly(stream, 4 * ndim))
    return np.frombuffer(read_exactly(stream, 4 * int(np.prod(shape))), np.float32).reshape(shape)


class ChildEnded(RuntimeError):
    """The AVX2 child process ended before answering: its answers are missing, not wrong."""


class AVX2Runner:
    """An IR compiled in a child process whose oneDNN is capped to AVX2: call it as a compiled model
    (`runner(pixels)[0]` are the logits). Close it, or use it in a `with` block."""

    def __init__(self, ir: Path):
        env = {**os.environ, **AVX2_ENVIRON}
        self.process = subprocess.Popen([sys.executable, "-m", __name__, str(ir)], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        try:
            write_array(self.process.stdin, pixels)
            return [read_array(self.process.stdout)]
        except (EOFError, BrokenPipeError):
            raise ChildEnded(f"the AVX2 child process ended (exit {self.process.wait()})") from None

    def close(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.wait()

    def __enter__(self) -> AVX2Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_pipes(ir: Path) -> None:
    from .openvino_runtime import compile_model, read_model

    stdout = os.fdopen(os.dup(1), "wb")  # the pipe to the parent; anything printed goes to stderr instead
    os.dup2(2, 1)
    compiled = compile_model(read_model(ir))
    stdin = sys.stdin.buffer
    while True:
        try:
            pixels = read_array(stdin)
        except EOFError:
            return
        write_array(stdout, compiled(pixels)[0])


if __name__ == "__main__":
    serve_pipes(Path(sys.argv[1]))
