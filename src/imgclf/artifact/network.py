"""The network by architecture name, and the model artifact's torch side.

The artifact is what training writes to the model dir and serving reads back:

    model.pt    the state_dict, loadable with torch.load(..., weights_only=True)
    model.json  the model card (card.py): arch, classes, eval transform, faster formats

Serving rebuilds the network from `model.json` and loads `model.pt` without unpickling code.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..names import WEIGHTS_FILE
from .card import ModelCard, check_arch, load_card, write_card


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


def save_artifact(model_dir: Path, model: nn.Module, card: ModelCard) -> None:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, model_dir / WEIGHTS_FILE)
    write_card(model_dir, card)


def load_artifact(model_dir: Path, map_location="cpu") -> tuple[nn.Module, ModelCard]:
    """The network in eval mode and its card, from a model dir that `save_artifact` wrote."""
    model_dir = Path(model_dir)
    card = load_card(model_dir)
    model = create_model(card.arch, len(card.classes))
    state = torch.load(model_dir / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.eval(), card


def to_openvino(model: nn.Module, crop_size: int):
    """The network as an OpenVINO model taking (N, 3, crop, crop) float32 pixels, any N."""
    import openvino as ov

    model = copy.deepcopy(model).float().cpu().eval()
    example = torch.zeros(1, 3, crop_size, crop_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # OpenVINO traces with torch.jit, which warns
        return ov.convert_model(model, example_input=example, input=[(-1, 3, crop_size, crop_size)])


def bf16_supported(device) -> bool:
    """Whether `device` (a torch.device or its name) computes in bfloat16 natively: a GPU that
    says so, or a CPU with AVX-512 BF16 or AMX (oneDNN's own check)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
