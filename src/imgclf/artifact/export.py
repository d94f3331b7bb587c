"""Faster copies of a trained network for CPU serving, written into the model artifact.

At the end of training (`export_serving_formats`):

    model.xml / model.bin            OpenVINO IR, float32 weights: the same answers as torch, faster
    model_int8.xml / model_int8.bin  OpenVINO IR after post-training static int8 quantization
                                     (NNCF), calibrated on a few hundred training images; where
                                     that keeps too few of float32's answers, accuracy-aware
                                     quantization leaves the most sensitive layers in float32
                                     (quantize.py)
    calibration/*.jpg                a few training images (int8 calibration at serving start-up
                                     for a copy without the int8 IR; serve/runtime.py)

Each is checked against the float32 torch network on the validation set (top-1 agreement and
accuracy; the int8 copy with each kind of int8 arithmetic this machine can run, int8_kernels.py)
and recorded in `model.json` (`ModelCard.formats`); serving picks from them (serve/precision.py).
IR files are an XML graph and raw weights: loading them runs no pickle.

OpenVINO and NNCF are optional (the `openvino` extra): without them the artifact keeps only the
torch weights, with one log line. Reading and compiling IR files is openvino_runtime.py's (torch-free).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from torch.utils.data.dataloader import default_collate

from ..names import CALIBRATION_DIR
from .card import INT8_MIN_AGREEMENT, Agreement, ModelCard, ServingFormat, write_card
from .int8_kernels import AVX2, VNNI, AVX2Runner, ChildEnded, int8_kernels
from .network import to_openvino
from .openvino_runtime import FILES, FP32_FORMAT, INT8_FORMAT, compile_model, openvino_available, read_model, save_model
from .quantize import Answers, quantize_to_agreement, quantize_with_avx2_kernels

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300  # NNCF's default subset size; more rarely changes the ranges it finds
MAX_VALIDATION_IMAGES = 5000
BATCH = 32
STORED_CALIBRATION_IMAGES = 32
ACCURACY_CONTROL_IMAGES = 300  # validation images that accuracy-aware quantization compares on


def reference_answers(reference: nn.Module, validation: Dataset) -> Answers:
    """(pixels, float32 top-1) batches of up to ACCURACY_CONTROL_IMAGES validation images."""
    with torch.inference_mode():
        return [(pixels.numpy(), reference(pixels).argmax(1).numpy())
                for pixels, _ in pixel_batches(validation, ACCURACY_CONTROL_IMAGES)]


def quantize_for_serving(ov_model, batches: list[np.ndarray], answers: Answers):
    """The int8 copy, brought to INT8_MIN_AGREEMENT where it can be (quantize.py): on a "vnni" CPU
    with "avx2" kernels, the kind whose saturating sums change more answers; in this process if that
    child fails, on other CPUs, or without validation images (plain int8, nothing to control)."""
    if answers and int8_kernels() == VNNI:
        try:
            return quantize_with_avx2_kernels(ov_model, batches, answers, INT8_MIN_AGREEMENT)
        except RuntimeError as e:
            log.warning("%s; quantizing with this CPU's %s kernels", e, VNNI)
    return quantize_to_agreement(ov_model, batches, answers, INT8_MIN_AGREEMENT)


def store_calibration_images(model_dir: Path, dataset: Dataset, resize_size: int,
                             limit: int = STORED_CALIBRATION_IMAGES) -> int:
    """Up to `limit` images of `dataset` drawn at random, their short side shrunk to the eval resize
    size, as JPEGs in the artifact's calibration/ folder. Returns how many were stored."""
    from PIL import Image

    if isinstance(dataset, IterableDataset):  # shards: no random access to draw from
        log.info("training on shards: no calibration images stored in the artifact")
        return 0
    plain = with_transform(dataset, None)
    out = Path(model_dir) / CALIBRATION_DIR
    out.mkdir(exist_ok=True)
    stored = 0
    for i in torch.randperm(len(plain), generator=torch.Generator().manual_seed(0))[:limit].tolist():
        item = plain[i]
        if item is None:  # unreadable
            continue
        img = item[0]
        scale = resize_size / min(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
        img.save(out / f"{stored:02d}.jpg", quality=95)
        stored += 1
    return stored


def with_transform(dataset: Dataset, transform) -> Dataset:
    """The same images with another transform (training images through the eval transform)."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    dataset = copy.copy(dataset)
    dataset.transform = transform
    return dataset


def readable(batch: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A batch of (pixels, label) items collated, the unreadable images (None items) left out."""
    items = [item for item in batch if item is not None]
    return default_collate(items) if items else None


def pixel_batches(dataset: Dataset, limit: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(pixels, labels) batches of at most `limit` images, drawn at random when there are more (from a
    shard dataset: its first `limit`, in its own shuffled order)."""
    if not isinstance(dataset, IterableDataset) and len(dataset) > limit:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
        dataset = Subset(dataset, sorted(order.tolist()))
    batches = DataLoader(dataset, batch_size=BATCH, collate_fn=readable)
    yield from (batch for batch in itertools.islice(batches, -(-limit // BATCH)) if batch is not None)


def agreements(reference: nn.Module, runners: list, validation: Dataset,
               limit: int = MAX_VALIDATION_IMAGES) -> list[Agreement]:
    """Each runner (an OpenVINO compiled model, or anything called like one) against the float32
    torch network on the same labelled images."""
    same, correct = [0] * len(runners), [0] * len(runners)
    correct_fp32 = seen = 0
    with torch.inference_mode():
        for pixels, labels in pixel_batches(validation, limit):
            fp32 = reference(pixels).argmax(1)
            for i, runner in enumerate(runners):
                other = torch.from_numpy(np.asarray(runner(pixels.numpy())[0]).argmax(1))
                same[i] += int((fp32 == other).sum())
                correct[i] += int((other == labels).sum())
            correct_fp32 += int((fp32 == labels).sum())
            seen += len(labels)
    if not seen:
        return [Agreement(0, 0.0, 0.0, 0.0) for _ in runners]
    return [Agreement(seen, s / seen, c / seen, correct_fp32 / seen) for s, c in zip(same, correct)]


def agreement(reference: nn.Module, compiled, validation: Dataset, limit: int = MAX_VALIDATION_IMAGES) -> Agreement:
    """`compiled` (an OpenVINO compiled model) against the float32 torch network on labelled images."""
    return agreements(reference, [compiled], validation, limit)[0]


def check_formats(reference: nn.Module, fp32, int8_ir: Path, validation: Dataset) -> tuple[Agreement, dict]:
    """The float32 copy's agreement, and the int8 copy's with each kind of int8 kernels this machine
    can run (int8_kernels.py): its own, and on a "vnni" CPU "avx2" in a capped child process. When
    that child ends early, the check is made again without it; any other error is raised as it is."""
    own = int8_kernels()
    int8 = {own: compile_model(read_model(int8_ir))}
    with contextlib.ExitStack() as children:
        if own == VNNI:
            int8[AVX2] = children.enter_context(AVX2Runner(int8_ir))
        try:
            fp32_checked, *int8_checked = agreements(reference, [compile_model(fp32), *int8.values()], validation)
        except ChildEnded as e:  # this CPU's own kernels still tell
            log.warning("int8 not checked with %s kernels: %s", AVX2, e)
            del int8[AVX2]
            fp32_checked, *int8_checked = agreements(reference, [compile_model(fp32), *int8.values()], validation)
    return fp32_checked, dict(zip(int8, int8_checked))


def export_serving_formats(model_dir: Path, model: nn.Module, card: ModelCard, calibration: Dataset,
                           validation: Dataset, calibration_images: int = CALIBRATION_IMAGES) -> ModelCard:
    """Write the OpenVINO float32 and int8 copies of `model` into `model_dir`, check both on
    `validation` against torch float32 and record them in model.json. `calibration` should give
    training images through the eval transform (`with_transform`). Returns the card written."""
    if not openvino_available(calibration=True):
        log.warning("openvino/nncf not installed: the artifact has no OpenVINO formats (pip install 'imgclf[openvino]')")
        return card
    stored = store_calibration_images(model_dir, calibration, card.eval.resize_size)
    log.info("%d calibration images stored in %s", stored, Path(model_dir) / CALIBRATION_DIR)
    start = time.perf_counter()
    model = copy.deepcopy(model).float().cpu().eval()
    model_dir = Path(model_dir)
    fp32 = to_openvino(model, card.eval.crop_size)
    batches = [pixels.numpy() for pixels, _ in pixel_batches(calibration, calibration_images)]
    int8 = quantize_for_serving(fp32, batches, reference_answers(model, validation))
    for name, ov_model in ((FP32_FORMAT, fp32), (INT8_FORMAT, int8)):
        save_model(ov_model, model_dir / FILES[name])
    fp32_checked, int8_checked = check_formats(model, fp32, model_dir / FILES[INT8_FORMAT], validation)
    log.info("%s: %s", FP32_FORMAT, fp32_checked)
    for kernels, checked in int8_checked.items():
        log.info("%s with %s kernels: %s", INT8_FORMAT, kernels, checked)
    lowest = min(int8_checked.values(), key=lambda a: (a.top1_agreement, -a.accuracy_drop))
    card = replace(card, formats={
        FP32_FORMAT: ServingFormat(FILES[FP32_FORMAT], "fp32", fp32_checked),
        INT8_FORMAT: ServingFormat(FILES[INT8_FORMAT], "int8", lowest, sum(map(len, batches)), int8_checked)})
    write_card(model_dir, card)
    log.info("OpenVINO formats written to %s in %.0f s", model_dir, time.perf_counter() - start)
    return card
