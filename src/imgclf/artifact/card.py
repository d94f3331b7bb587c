"""The model card, `model.json`: what the artifact holds and how to feed its network, readable
without torch (the CPU image serves from it; model.py builds and loads the network).

    {"format_version", "arch", "classes", "eval": EvalSettings, "versions", "formats"}

`formats` lists faster copies of the network written beside the weights for CPU serving
(OpenVINO IR files, export.py), each with its agreement with float32 on the validation set.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..names import CARD_FILE
from .images import EvalSettings

FORMAT_VERSION = 1
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "efficientnet_lite0")
# What serving's `auto` demands of an int8 copy on the validation set, and what training's
# accuracy-aware quantization aims for: this share of float32's top-1 answers kept, at most this
# accuracy lost
INT8_MIN_AGREEMENT, INT8_MAX_ACCURACY_DROP = 0.99, 0.005


class ModelError(ValueError):
    """A model can't be built or loaded as asked (unknown arch, missing or mismatched weights)."""


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ModelError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


@dataclass(frozen=True)
class Agreement:
    """How a faster format's answers compare with the float32 network's on labelled images."""

    images: int
    top1_agreement: float  # fraction of images with the same top-1 class as float32
    accuracy: float
    fp32_accuracy: float

    @property
    def accuracy_drop(self) -> float:
        return self.fp32_accuracy - self.accuracy

    def meets(self, min_agreement: float, max_accuracy_drop: float) -> bool:
        return self.images > 0 and self.top1_agreement >= min_agreement and self.accuracy_drop <= max_accuracy_drop

    def __str__(self) -> str:
        return (f"top-1 agreement {self.top1_agreement:.2%} and accuracy {self.accuracy:.2%} "
                f"(float32 {self.fp32_accuracy:.2%}) on {self.images} validation images")

    def to_dict(self) -> dict:
        return {"images": self.images, "top1_agreement": round(self.top1_agreement, 6),
                "accuracy": round(self.accuracy, 6), "fp32_accuracy": round(self.fp32_accuracy, 6),
                "accuracy_drop": round(self.accuracy_drop, 6)}

    @classmethod
    def from_dict(cls, d: dict) -> Agreement:
        return cls(int(d["images"]), float(d["top1_agreement"]), float(d["accuracy"]), float(d["fp32_accuracy"]))


@dataclass(frozen=True)
class ServingFormat:
    """A copy of the network in another runtime's format, stored in the artifact: `file` is
    relative to the model dir; `agreement` is None when it was never checked on labelled images.
    An int8 copy's answers depend on the CPU's int8 arithmetic (int8_kernels.py): `by_kernels`
    holds its agreement with each kind it was checked on, and `agreement` is the lowest of them."""

    file: str
    precision: str  # fp32 or int8
    agreement: Agreement | None = None
    calibration_images: int = 0  # int8: images its activation ranges were measured on
    by_kernels: dict[str, Agreement] = field(default_factory=dict)

    def agreement_on(self, kernels: str) -> Agreement | None:
        """The agreement measured with `kernels`, else the lowest measured."""
        return self.by_kernels.get(kernels, self.agreement)

    def to_dict(self) -> dict:
        d = {"file": self.file, "precision": self.precision,
             "agreement": self.agreement.to_dict() if self.agreement else None}
        if self.by_kernels:
            d["agreement_by_kernels"] = {kernels: a.to_dict() for kernels, a in self.by_kernels.items()}
        if self.calibration_images:
            d["calibration_images"] = self.calibration_images
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ServingFormat:
        agreement = Agreement.from_dict(d["agreement"]) if d.get("agreement") else None
        by_kernels = {kernels: Agreement.from_dict(a) for kernels, a in (d.get("agreement_by_kernels") or {}).items()}
        return cls(str(d["file"]), str(d["precision"]), agreement, int(d.get("calibration_images", 0)), by_kernels)


@dataclass(frozen=True)
class ModelCard:
    """`model.json`: everything needed to rebuild the network and its input transform, and the
    faster formats stored beside the weights (name -> `ServingFormat`, e.g. "openvino_int8")."""

    arch: str
    classes: tuple[str, ...]
    eval: EvalSettings
    formats: dict[str, ServingFormat] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "classes": list(self.classes),
            "eval": self.eval.to_dict(),
            "versions": versions(),
            "formats": {name: f.to_dict() for name, f in self.formats.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        if d.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"model.json format_version {d.get('format_version')!r}; expected {FORMAT_VERSION}")
        formats = {name: ServingFormat.from_dict(f) for name, f in (d.get("formats") or {}).items()}
        return cls(arch=check_arch(d["arch"]), classes=tuple(d["classes"]), eval=EvalSettings.from_dict(d["eval"]),
                   formats=formats)


def versions() -> dict[str, str]:
    """The versions of imgclf and of the libraries that wrote the weights (as the loaded modules
    report them: torch's carries its CUDA build, 2.14.1+cu130)."""
    found = {"imgclf": __version__}
    for name in ("torch", "torchvision"):
        module = sys.modules.get(name)
        try:
            found[name] = str(module.__version__) if module else metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_card(model_dir: Path, card: ModelCard) -> None:
    (Path(model_dir) / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")


def load_card(model_dir: Path) -> ModelCard:
    model_dir = Path(model_dir)
    try:
        return ModelCard.from_dict(json.loads((model_dir / CARD_FILE).read_text()))
    except FileNotFoundError:
        raise ModelError(f"no {CARD_FILE} in {model_dir}: not a model artifact") from None
