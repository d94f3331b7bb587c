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

`IMGCLF_PRECISION` chooses (`choose_runner`):

- `auto`: int8 when its recorded agreement with float32 on the validation set meets the threshold
  (IMGCLF_INT8_MIN_AGREEMENT, IMGCLF_INT8_MAX_ACCURACY_DROP): the agreement measured with this
  CPU's kind of int8 arithmetic (int8_kernels.py), or the lowest recorded where it was not; else
  bfloat16 where the processor has it and a probe batch gives the same answers as float32, else
  float32. It logs its choice with the numbers it used.
- `fp32`, `bf16`: as named. `int8`: the stored int8 IR; an artifact without one is quantized at
  start-up on the training images stored in it (calibration/; slower start, agreement unchecked),
  and one without those either is refused.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..artifact import openvino_runtime as openvino
from ..artifact.card import ModelCard, ModelError, ServingFormat, load_card
from ..artifact.images import EvalTransform, load_rgb
from ..artifact.int8_kernels import int8_kernels
from ..names import CALIBRATION_DIR

log = logging.getLogger(__name__)

FP32, INT8 = openvino.FP32_FORMAT, openvino.INT8_FORMAT
EXPORT_COMMAND = "imgclf-export"  # the console script that adds the IR files to an artifact (export_cli.py)
# bfloat16 keeps 8 bits of mantissa: on 20 real photos (bench/serve_precision_agreement.py) an
# ImageNet efficientnet_lite0 kept every top-1, its probabilities moved by up to 0.04 under torch
# autocast and 0.08 in OpenVINO's bf16 mode. On the smooth probe images they move less: refuse
# bf16 when they move more than this, or when a top-1 that float32 is sure of changes.
MAX_PROBABILITY_GAP = 0.05


class Runner(Protocol):
    name: str  # e.g. "openvino int8", logged and reported by benchmarks

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OpenVinoRunner:
    def __init__(self, compiled, name: str):
        self.compiled, self.name = compiled, name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return softmax(self.compiled(np.ascontiguousarray(pixels, dtype=np.float32))[0])


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
            f"$PWD/model:/opt/ml/model IMAGE {EXPORT_COMMAND} /opt/ml/model`), or serve it with the full image")


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


def same_answers(fp32: np.ndarray, other: np.ndarray) -> tuple[bool, float]:
    """(agrees, largest probability gap): every top-1 that float32 is sure of is kept and no
    probability moves by more than MAX_PROBABILITY_GAP."""
    gap = float(np.abs(fp32 - other).max())
    top2 = -np.sort(-fp32, axis=1)[:, :2]
    sure = (top2[:, 0] - top2[:, -1]) > 2 * MAX_PROBABILITY_GAP
    same_top1 = bool((fp32.argmax(1) == other.argmax(1))[sure].all())
    return gap <= MAX_PROBABILITY_GAP and same_top1, gap


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
        return OpenVinoRunner(openvino.compile_model(int8, threads=self.threads), "openvino int8 (calibrated at start-up)")

    def _openvino(self, name: str, hint: str, label: str) -> OpenVinoRunner:
        ov_model = openvino.read_model(self.model_dir / self.card.formats[name].file)
        return OpenVinoRunner(openvino.compile_model(ov_model, threads=self.threads, precision_hint=hint), label)


def measured_with(int8: ServingFormat, kernels: str) -> str:
    """Which int8 kernels the agreement in use was measured with, for the log."""
    if not int8.by_kernels:
        return ""  # an artifact from before they were recorded
    if kernels in int8.by_kernels:
        return f" with {kernels} kernels, as this CPU's"
    return f" (the lowest of {', '.join(int8.by_kernels)} kernels; this CPU's {kernels} were not measured)"


def choose_runner(precision: str, factory: RunnerFactory, probe: np.ndarray,
                  min_agreement: float, max_accuracy_drop: float) -> Runner:
    """The runner for IMGCLF_PRECISION=`precision` (see the module's docstring); logs why."""
    if precision in ("fp32", "bf16", "int8"):
        runner = getattr(factory, precision)()
        log.info("precision %s: %s", precision, runner.name)
        return runner
    int8 = factory.card.formats.get(INT8) if factory.device == "cpu" else None
    if int8 is None:
        reason = "the artifact has no int8 model" if factory.device == "cpu" else "int8 runs on CPUs only"
    elif not openvino.openvino_available():
        reason = "OpenVINO is not installed"
    elif (checked := int8.agreement_on(kernels := int8_kernels())) is None:
        reason = "int8 was never checked on labelled images"
    elif not checked.meets(min_agreement, max_accuracy_drop):
        reason = f"int8 {checked}{measured_with(int8, kernels)} misses the threshold"
    else:
        log.info("precision auto: int8, %s%s (threshold: agreement >= %.1f%%, accuracy drop <= %.1f points)",
                 checked, measured_with(int8, kernels), 100 * min_agreement, 100 * max_accuracy_drop)
        return factory.int8()
    fp32 = factory.fp32()
    if not factory.bf16_supported():
        log.info("precision auto: %s (%s; no bfloat16 on this processor)", fp32.name, reason)
        return fp32
    try:
        bf16 = factory.bf16()
        agrees, gap = same_answers(fp32(probe), bf16(probe))
    except RuntimeError as e:  # OpenVINO can lack bf16 kernels (seen with ONEDNN_MAX_CPU_ISA=AVX2: none for max-pool)
        log.info("precision auto: %s (%s; bfloat16 failed to run: %s)", fp32.name, reason, str(e).strip()[:300])
        return fp32
    chosen = bf16 if agrees else fp32
    log.info("precision auto: %s (%s; bfloat16 vs float32 on %d probe images: largest probability gap %.4f, %s)",
             chosen.name, reason, len(probe), gap, "agrees" if agrees else "differs")
    return chosen
