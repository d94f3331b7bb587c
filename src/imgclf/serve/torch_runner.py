"""The torch path of a model worker (runtime.py imports it only when used; the CPU image has no
torch): the network from `model.pt`, channels-last under inference_mode, optionally in bfloat16
autocast. It serves on GPUs, and on CPUs for artifacts without the OpenVINO copies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifact.card import ModelCard
from ..artifact.network import create_model
from ..names import WEIGHTS_FILE


def device_for(gpu_id) -> str:
    return f"cuda:{gpu_id}" if torch.cuda.is_available() else "cpu"


def load_model(model_dir: Path, card: ModelCard) -> nn.Module:
    model = create_model(card.arch, len(card.classes))
    model.load_state_dict(torch.load(Path(model_dir) / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.eval()


class TorchRunner:
    def __init__(self, model: nn.Module, device: str, autocast: bool, threads: int):
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.autocast = autocast
        self.name = f"torch {'bf16' if autocast else 'fp32'} on {self.device.type}"

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(pixels).to(self.device, memory_format=torch.channels_last, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(batch)
        return logits.float().softmax(dim=1).cpu().numpy()
