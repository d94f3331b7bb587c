"""How a model worker runs the network: the precision and runtime it serves with.

A `Runner` takes a batch of transformed pixels and returns class probabilities. Two kinds:

- `OpenVinoRunner`: the OpenVINO IR files that training stored in the artifact (export.py), on the
  CPU: float32 (the same answers as torch, faster), bfloat16 (OpenVINO's bf16 inference mode on
  the float32 IR) or int8 (the quantized IR).
- `TorchRunner`: the torch network, channels-last, under inference_mode, optionally in bfloat16
  autocast: on a GPU, and on a CPU for artifacts without IR files or without OpenVINO installed.

`IMGCLF_PRECISION` chooses (`choose_runner`):

- `auto`: int8 when its recorded agreement with float32 on the validation set meets the threshold
  (IMGCLF_INT8_MIN_AGREEMENT, IMGCLF_INT8_MAX_ACCURACY_DROP), else bfloat16 where the processor
  has it and a probe batch gives the same answers as float32, else float32. It logs its choice
  with the numbers it used.
- `fp32`, `bf16`: as named. `int8`: the stored int8 IR; an artifact without one is quantized at
  start-up on the training images stored in it (calibration/; slower start, agreement unchecked),
  and one without those either is refused.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from .. import export
from ..model import ModelCard, create_model
from ..presets import ClassificationPresetEval, load_rgb

log = logging.getLogger(__name__)

FP32, INT8 = export.FP32_FORMAT, export.INT8_FORMAT
PROBE_IMAGES = 4
# bfloat16 keeps 8 bits of mantissa: on 20 real photos (bench/serve_precision_agreement.py) an
# ImageNet efficientnet_lite0 kept every top-1, its probabilities moved by up to 0.04 under torch
# autocast and 0.08 in OpenVINO's bf16 mode. On the smooth probe images they move less: refuse
# bf16 when they move more than this, or when a top-1 that float32 is sure of changes.
MAX_PROBABILITY_GAP = 0.05


class Runner(Protocol):
    name: str  # e.g. "openvino int8", logged and reported by benchmarks

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


class TorchRunner:
    def __init__(self, model: nn.Module, device: torch.device, autocast: bool):
        self.model = model.to(device, memory_format=torch.channels_last)
        self.device, self.autocast = device, autocast
        self.name = f"torch {'bf16' if autocast else 'fp32'} on {device.type}"

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, memory_format=torch.channels_last, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(pixels)
        return logits.float().softmax(dim=1).cpu()


class OpenVinoRunner:
    def __init__(self, compiled, name: str):
        self.compiled, self.name = compiled, name

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.compiled(np.ascontiguousarray(pixels.numpy(), dtype=np.float32))[0]
        return torch.from_numpy(logits).float().softmax(dim=1)


def resident_mb() -> float:
    """This process's resident memory in MB (Linux), for the memory a loaded model takes."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def probe_batch(n: int, size: int, transform: ClassificationPresetEval) -> torch.Tensor:
    """Deterministic smooth colour images through the real transform: inputs in the range the
    network sees, unlike uniform noise."""
    g = torch.Generator().manual_seed(0)
    images = []
    for _ in range(n):
        low = torch.rand(3, 4, 4, generator=g)
        up = torch.nn.functional.interpolate(low[None], size=(size, size), mode="bicubic", align_corners=False)[0]
        images.append(Image.fromarray((up.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()))
    return torch.stack([transform(img) for img in images])


def calibration_photos(model_dir: Path, transform: ClassificationPresetEval) -> torch.Tensor:
    """The training images stored in the artifact, decoded as requests are and through its transform."""
    paths = sorted((model_dir / export.CALIBRATION_DIR).glob("*.jpg"))
    if not paths:
        raise RuntimeError(f"IMGCLF_PRECISION=int8: {model_dir} has neither an int8 model nor calibration images "
                           f"({export.CALIBRATION_DIR}/) to make one; retrain with the openvino extra installed "
                           "(it stores both), or serve with IMGCLF_PRECISION=auto")
    pixels = []
    for path in paths:
        with Image.open(path) as img:
            pixels.append(transform(load_rgb(img, transform.decode_min_side)))
    return torch.stack(pixels)


def same_answers(fp32: torch.Tensor, other: torch.Tensor) -> tuple[bool, float]:
    """(agrees, largest probability gap): every top-1 that float32 is sure of is kept and no
    probability moves by more than MAX_PROBABILITY_GAP."""
    gap = (fp32 - other).abs().max().item()
    top2 = fp32.topk(min(2, fp32.shape[1])).values
    sure = (top2[:, 0] - top2[:, -1]) > 2 * MAX_PROBABILITY_GAP
    same_top1 = bool((fp32.argmax(1) == other.argmax(1))[sure].all())
    return gap <= MAX_PROBABILITY_GAP and same_top1, gap


class RunnerFactory:
    """Builds the runners one artifact offers, loading each file only when asked."""

    def __init__(self, model_dir: Path, card: ModelCard, device: torch.device, threads: int):
        self.model_dir, self.card, self.device, self.threads = Path(model_dir), card, device, threads
        self.use_openvino = device.type == "cpu" and FP32 in card.formats and export.openvino_available()
        self._model = None

    def torch_model(self) -> nn.Module:
        if self._model is None:
            model = create_model(self.card.arch, len(self.card.classes))
            state = torch.load(self.model_dir / "model.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            self._model = model.eval()
        return self._model

    def fp32(self) -> Runner:
        if self.use_openvino:
            return self._openvino(FP32, "f32", "openvino fp32")
        return TorchRunner(self.torch_model(), self.device, autocast=False)

    def bf16(self) -> Runner:
        if self.use_openvino:
            return self._openvino(FP32, "bf16", "openvino bf16")
        return TorchRunner(self.torch_model(), self.device, autocast=True)

    def int8(self) -> Runner:
        if not export.openvino_available(calibration=INT8 not in self.card.formats):
            raise RuntimeError("IMGCLF_PRECISION=int8 needs OpenVINO (and NNCF for an artifact without an int8 "
                               "model): pip install 'imgclf[openvino]'")
        if INT8 in self.card.formats:
            return self._openvino(INT8, "f32", "openvino int8")
        fp32 = (export.read_model(self.model_dir / self.card.formats[FP32].file) if FP32 in self.card.formats
                else export.to_openvino(self.torch_model(), self.card.eval.crop_size))
        photos = calibration_photos(self.model_dir, ClassificationPresetEval.from_settings(self.card.eval))
        log.warning("the artifact has no int8 model: quantizing at start-up on its %d calibration images; its "
                    "agreement with float32 is unchecked", len(photos))
        int8 = export.quantize(fp32, [b.numpy() for b in photos.split(8)])
        return OpenVinoRunner(export.compile_model(int8, threads=self.threads), "openvino int8 (calibrated at start-up)")

    def _openvino(self, name: str, hint: str, label: str) -> OpenVinoRunner:
        ov_model = export.read_model(self.model_dir / self.card.formats[name].file)
        return OpenVinoRunner(export.compile_model(ov_model, threads=self.threads, precision_hint=hint), label)


def choose_runner(precision: str, factory: RunnerFactory, probe: torch.Tensor,
                  min_agreement: float, max_accuracy_drop: float) -> Runner:
    """The runner for IMGCLF_PRECISION=`precision` (see the module's docstring); logs why."""
    if precision in ("fp32", "bf16", "int8"):
        runner = getattr(factory, precision)()
        log.info("precision %s: %s", precision, runner.name)
        return runner
    int8 = factory.card.formats.get(INT8) if factory.device.type == "cpu" else None
    if int8 is None:
        reason = "the artifact has no int8 model" if factory.device.type == "cpu" else "int8 runs on CPUs only"
    elif not export.openvino_available():
        reason = "OpenVINO is not installed"
    elif int8.agreement is None or not int8.agreement.meets(min_agreement, max_accuracy_drop):
        reason = f"int8 {int8.agreement or 'was never checked on labelled images'} misses the threshold"
    else:
        log.info("precision auto: int8, %s (threshold: agreement >= %.1f%%, accuracy drop <= %.1f points)",
                 int8.agreement, 100 * min_agreement, 100 * max_accuracy_drop)
        return factory.int8()
    fp32 = factory.fp32()
    if not bf16_supported(factory.device):
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
