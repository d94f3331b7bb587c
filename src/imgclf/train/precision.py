"""Mixed precision for training: AMP on CUDA, bfloat16 autocast on CPUs that have it, and the
channels_last layout with either; float32 otherwise.

On CUDA, autocast runs bfloat16 where the GPU supports it, else float16 with a gradient scaler.
On a CPU, bfloat16 autocast needs AVX-512 BF16 or AMX (oneDNN's check, as serving's probe uses);
even there it is not always faster (small networks, small images, other load on the cores), so
`choose` times a few training steps of the job's network at its image size both ways and keeps
float32 unless bfloat16 is faster, saying so in one log line.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..artifact.network import bf16_supported

log = logging.getLogger(__name__)

PROBE_BATCH = 4
PROBE_ROUNDS = 2  # timed steps per precision, alternated, after one untimed step each


def autocast(device: torch.device, enabled: bool):
    """The autocast context of a job that runs mixed precision (`enabled`) on `device`."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def memory_format(enabled: bool) -> torch.memory_format:
    return torch.channels_last if enabled else torch.contiguous_format


def needs_scaler(device: torch.device, enabled: bool) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
    return enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class ProbeResult:
    fp32_images_per_s: float
    bf16_images_per_s: float

    @property
    def bf16_faster(self) -> bool:
        return self.bf16_images_per_s > self.fp32_images_per_s


def _step_seconds(model: nn.Module, images: torch.Tensor, device: torch.device, mixed: bool) -> float:
    model.to(memory_format=memory_format(mixed))
    x = images.to(memory_format=memory_format(mixed))
    start = time.perf_counter()
    with autocast(device, mixed):
        out = model(x)
    out.float().sum().backward()
    elapsed = time.perf_counter() - start
    for p in model.parameters():
        p.grad = None
    return elapsed


def probe(model: nn.Module, device: torch.device, image_size: int, batch_size: int) -> ProbeResult:
    """Images/s of a forward and backward pass in float32 and in bfloat16 + channels_last, alternated
    so that other load hits both alike. The network runs in eval mode (no batch-norm statistics
    change) and its gradients are cleared after: the job's training is unaffected."""
    was_training = model.training
    model.eval()
    n = min(PROBE_BATCH, batch_size)
    images = torch.randn(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    times = {False: [], True: []}
    try:
        for mixed in (False, True):
            _step_seconds(model, images, device, mixed)
        for _ in range(PROBE_ROUNDS):
            for mixed in (False, True):
                times[mixed].append(_step_seconds(model, images, device, mixed))
    finally:
        model.train(was_training)
    return ProbeResult(n / min(times[False]), n / min(times[True]))


def choose(model: nn.Module, device: torch.device, *, requested: bool, image_size: int, batch_size: int) -> bool:
    """Whether the job runs mixed precision (and channels_last); leaves `model` in that layout."""
    use = requested
    if requested and device.type == "cpu":
        if not bf16_supported(device):
            log.info("precision: float32 (this CPU has no AVX-512 BF16 or AMX for bfloat16 autocast)")
            use = False
        else:
            result = probe(model, device, image_size, batch_size)
            use = result.bf16_faster
            log.info("precision: %s (probe: bfloat16 autocast + channels_last %.1f images/s, float32 %.1f)",
                     "bfloat16 autocast" if use else "float32, bfloat16 was not faster",
                     result.bf16_images_per_s, result.fp32_images_per_s)
    elif requested:
        log.info("precision: CUDA autocast %s + channels_last",
                 "bfloat16" if torch.cuda.is_bf16_supported() else "float16 with loss scaling")
    model.to(memory_format=memory_format(use))
    return use
