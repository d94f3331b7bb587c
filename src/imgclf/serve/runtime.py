"""How a model worker runs the network: the precision and runtime it serves with.

A `Runner` takes a batch of transformed pixels (float32 numpy, N x 3 x crop x crop) and returns
class probabilities (numpy). Two kinds:

- `OpenVinoRunner`: the OpenVINO IR files that training stored in the artifact (export.py), on the
  CPU: float32 (the same answers as torch, faster), bfloat16 (OpenVINO's bf16 inference mode on
  the float32 IR) or int8 (the quantized IR). Needs no torch: the CPU image serves with it alone.
- `TorchRunner` (torch_runner.py, imported only when used): the torch network, channels-last,
  under inference_mode, optionally in bfloat16 autocast: on a GPU, and on a CPU for artifacts
  without IR files or without OpenVINO installed. An image without torch refuses such an
  artifact at start (`unservable_reason`), naming the command that adds the IR files.

`IMGCLF_PRECISION` chooses among them: precision.py.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import platform
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..artifact import openvino_runtime as openvino
from ..artifact.card import ModelCard, ModelError, load_card
from ..artifact.images import EvalTransform, load_rgb
from ..names import CALIBRATION_DIR, SAGEMAKER_BASE_DIR

log = logging.getLogger(__name__)

FP32, INT8 = openvino.FP32_FORMAT, openvino.INT8_FORMAT
EXPORT_COMMAND = "imgclf-export"  # the console script that adds the IR files to an artifact (export_cli.py)
ARM_MACHINES = ("aarch64", "arm64")  # platform.machine() on Graviton (Linux) and Apple silicon


class Runner(Protocol):
    name: str  # e.g. "openvino int8", logged and reported by benchmarks

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OpenVinoRunner:
    def __init__(self, ov_model, name: str, threads: int, precision_hint: str = "f32"):
        self.ov_model, self.name, self.threads, self.precision_hint = ov_model, name, threads, precision_hint
        self.compiled = openvino.compile_model(ov_model, threads=threads, precision_hint=precision_hint)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return softmax(self.compiled(np.ascontiguousarray(pixels, dtype=np.float32))[0])

    def with_threads(self, threads: int) -> OpenVinoRunner:
        """The same network compiled again for `threads` threads."""
        return OpenVinoRunner(self.ov_model, self.name, threads, self.precision_hint)


def torch_available() -> bool:
    """Whether torch is installed (the full image), found without importing it."""
    return importlib.util.find_spec("torch") is not None


def worker_device(gpu_id) -> str:
    """Where a worker runs the network: the GPU MMS gave it when torch can use one, else the CPU."""
    if gpu_id is None or not torch_available():
        return "cpu"
    from .torch_runner import device_for

    return device_for(gpu_id)


def unservable_reason(model_dir: Path, card: ModelCard | None = None) -> str | None:
    """Why this installation cannot serve the artifact (no torch, and no OpenVINO copy to run
    instead), or None when it can."""
    if card is None:
        try:
            card = load_card(model_dir)
        except (ModelError, ValueError, KeyError):  # a broken card: the worker says what is wrong with it
            return None
    if torch_available() or (FP32 in card.formats and openvino.openvino_available()):
        return None
    return (f"{model_dir} has no OpenVINO copy of its network (model.xml), and this image serves without "
            f"torch: add the copies with the full image, `{EXPORT_COMMAND} MODEL_DIR` (e.g. `docker run --rm -v "
            f"$PWD/model:{SAGEMAKER_BASE_DIR}/model IMAGE {EXPORT_COMMAND} {SAGEMAKER_BASE_DIR}/model`), or serve it "
            "with the full image")


def resident_mb() -> float:
    """This process's resident memory in MB (Linux), for the memory a loaded model takes."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def calibration_photos(model_dir: Path, transform: EvalTransform) -> np.ndarray:
    """The training images stored in the artifact, decoded as requests are and through its transform."""
    paths = sorted((model_dir / CALIBRATION_DIR).glob("*.jpg"))
    if not paths:
        raise RuntimeError(f"IMGCLF_PRECISION=int8: {model_dir} has neither an int8 model nor calibration images "
                           f"({CALIBRATION_DIR}/) to make one; retrain with the openvino extra installed "
                           "(it stores both), or serve with IMGCLF_PRECISION=auto")
    pixels = []
    for path in paths:
        with Image.open(path) as img:
            pixels.append(transform(load_rgb(img, transform.decode_min_side)))
    return np.stack(pixels)


def on_arm() -> bool:
    return platform.machine().lower() in ARM_MACHINES


class RunnerFactory:
    """Builds the runners one artifact offers, loading each file only when asked. `device` is
    "cpu" or "cuda:N" (`worker_device`)."""

    def __init__(self, model_dir: Path, card: ModelCard, device: str, threads: int):
        self.model_dir, self.card, self.device, self.threads = Path(model_dir), card, device, threads
        self.use_openvino = device == "cpu" and FP32 in card.formats and openvino.openvino_available()
        reason = unservable_reason(self.model_dir, card)
        if reason:
            raise RuntimeError(reason)
        self._torch = None

    def torch(self, autocast: bool) -> Runner:
        from . import torch_runner

        if self._torch is None:
            self._torch = torch_runner.load_model(self.model_dir, self.card)
        return torch_runner.TorchRunner(self._torch, self.device, autocast=autocast, threads=self.threads)

    def bf16_supported(self) -> bool:
        if self.use_openvino:
            return openvino.bf16_supported()
        from ..artifact.network import bf16_supported

        return bf16_supported(self.device)

    def fp32(self) -> Runner:
        if self.use_openvino:
            return self._openvino(FP32, "f32", "openvino fp32")
        return self.torch(autocast=False)

    def bf16(self) -> Runner:
        if self.use_openvino:
            return self._openvino(FP32, "bf16", "openvino bf16")
        return self.torch(autocast=True)

    def reduced_precisions(self) -> list[str]:
        """The float precisions below float32 this processor has kernels for: "bf16"; on ARM also
        "f16" (OpenVINO's default there; x86 CPUs that list it run it no faster than bf16)."""
        found = ["bf16"] if self.bf16_supported() else []
        if self.use_openvino and on_arm() and openvino.f16_supported():
            found.append("f16")
        return found

    def reduced(self, precision: str) -> Runner:
        return self.bf16() if precision == "bf16" else self._openvino(FP32, "f16", "openvino f16")

    def int8(self) -> Runner:
        if INT8 in self.card.formats and openvino.openvino_available():
            return self._openvino(INT8, "f32", "openvino int8")
        if not (torch_available() and openvino.openvino_available(calibration=True)):
            raise RuntimeError("IMGCLF_PRECISION=int8 on an artifact without an int8 model needs OpenVINO, NNCF and "
                               "torch (the full image, or pip install 'imgclf[openvino]')")
        from ..artifact import quantize
        from ..artifact.network import to_openvino

        fp32 = (openvino.read_model(self.model_dir / self.card.formats[FP32].file) if FP32 in self.card.formats
                else to_openvino(self.torch(autocast=False).model, self.card.eval.crop_size))
        photos = calibration_photos(self.model_dir, EvalTransform(self.card.eval))
        log.warning("the artifact has no int8 model: quantizing at start-up on its %d calibration images; its "
                    "agreement with float32 is unchecked", len(photos))
        int8 = quantize.quantize(fp32, [photos[i:i + 8] for i in range(0, len(photos), 8)])
        return OpenVinoRunner(int8, "openvino int8 (calibrated at start-up)", self.threads)

    def _openvino(self, name: str, hint: str, label: str) -> OpenVinoRunner:
        return OpenVinoRunner(openvino.read_model(self.model_dir / self.card.formats[name].file), label, self.threads, hint)
