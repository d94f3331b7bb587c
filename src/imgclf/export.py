"""Faster copies of a trained network for CPU serving, written into the model artifact.

At the end of training (`export_serving_formats`):

    model.xml / model.bin            OpenVINO IR, float32 weights: the same answers as torch, faster
    model_int8.xml / model_int8.bin  OpenVINO IR after post-training static int8 quantization
                                     (NNCF), calibrated on a few hundred training images; where
                                     that keeps too few of float32's answers, accuracy-aware
                                     quantization leaves the most sensitive layers in float32
    calibration/*.jpg                a few training images (int8 calibration at serving start-up
                                     for a copy without the int8 IR; serve/runtime.py)

Each is checked against the float32 torch network on the validation set (top-1 agreement and
accuracy; the int8 copy with each kind of int8 arithmetic this machine can run, int8_kernels.py)
and recorded in `model.json` (`ModelCard.formats`); serving picks from them (serve/runtime.py).
IR files are an XML graph and raw weights: loading them runs no pickle.

OpenVINO and NNCF are optional (the `openvino` extra): without them the artifact keeps only the
torch weights, with one log line. Reading and compiling IR files is openvino_runtime.py's (torch-free).

Every OpenVINO call that may start its CPU plugin is followed by `signalstack.keep_signal_stack()`:
see signalstack.py for why.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, Subset

from .data import make_loader
from .int8_kernels import AVX2, VNNI, AVX2Runner, int8_kernels
from .model import Agreement, ModelCard, ServingFormat, write_card
from .openvino_runtime import (FILES, FP32_FORMAT, INT8_FORMAT, compile_model,  # noqa: F401
                               openvino_available, read_model)
from .names import CALIBRATION_DIR
from .serve.profiles import INT8_MIN_AGREEMENT
from .signalstack import keep_signal_stack

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300  # NNCF's default subset size; more rarely changes the ranges it finds
FULL_BIAS_CORRECTION_IMAGES = 100
MAX_VALIDATION_IMAGES = 5000
BATCH = 32
STORED_CALIBRATION_IMAGES = 32
ACCURACY_CONTROL_IMAGES = 300  # validation images that accuracy-aware quantization compares on
RANKING_IMAGES = 64  # of those, the ones it ranks layers on: the most changed by int8 (NNCF picks them)
MAX_FLOAT32_GROUPS = 10  # groups of layers put back to float32 at most: bounds the time it takes


def to_openvino(model: nn.Module, crop_size: int):
    """The network as an OpenVINO model taking (N, 3, crop, crop) float32 pixels, any N."""
    import openvino as ov

    model = copy.deepcopy(model).float().cpu().eval()
    example = torch.zeros(1, 3, crop_size, crop_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # OpenVINO traces with torch.jit, which warns
        return ov.convert_model(model, example_input=example, input=[(-1, 3, crop_size, crop_size)])


def quantization_settings(batches: list[np.ndarray]) -> dict:
    """NNCF's settings for post-training static int8 quantization on CPUs: symmetric weights per
    channel, activation ranges measured on every calibration batch, and bias correction: the full
    one from FULL_BIAS_CORRECTION_IMAGES calibration images on (on the bundled Fashion-MNIST sample,
    112 images, it kept 48 of 48 top-1 answers where the fast one kept 46), the fast one below that
    (from 10 photos the full one estimated worse: 18 of 20 ImageNet photos kept instead of 19)."""
    import nncf

    nncf.set_log_level(logging.WARNING)
    return dict(calibration_dataset=nncf.Dataset(batches), subset_size=len(batches),
                target_device=nncf.TargetDevice.CPU, preset=nncf.QuantizationPreset.PERFORMANCE,
                fast_bias_correction=sum(map(len, batches)) < FULL_BIAS_CORRECTION_IMAGES)


def quantize(ov_model, batches: list[np.ndarray]):
    """Post-training static int8 quantization with NNCF (`quantization_settings`)."""
    import nncf

    try:
        return nncf.quantize(ov_model, **quantization_settings(batches))
    finally:
        keep_signal_stack()


def reference_answers(reference: nn.Module, validation: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """(pixels, float32 top-1) batches of up to ACCURACY_CONTROL_IMAGES validation images."""
    with torch.inference_mode():
        return [(pixels.numpy(), reference(pixels).argmax(1).numpy())
                for pixels, _ in pixel_batches(validation, ACCURACY_CONTROL_IMAGES)]


def top1_agreement(compiled, answers: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, None]:
    """The share of float32's top-1 answers that `compiled` gives (NNCF's validation_fn shape)."""
    same = sum(int((np.asarray(compiled(pixels)[0]).argmax(1) == top1).sum()) for pixels, top1 in answers)
    return same / max(1, sum(len(top1) for _, top1 in answers)), None


def quantize_to_agreement(ov_model, batches: list[np.ndarray], reference: nn.Module, validation: Dataset,
                          min_agreement: float = INT8_MIN_AGREEMENT):
    """`quantize` with NNCF's accuracy control: where the int8 copy's top-1 agreement with float32 on
    validation images is below `min_agreement`, it ranks the groups of quantized layers by how much
    they change the answers and puts the worst back to float32, one group per iteration, until the
    agreement is met or MAX_FLOAT32_GROUPS iterations have run (the copy is then recorded below the
    threshold, and `auto` serves float32). Ranking compiles and evaluates the model once per group
    (55 on a ResNet50), and again after a step that made things worse: RANKING_IMAGES keep that short.
    NNCF returns the copy of its last iteration, which can agree less than the plain int8 copy it
    started from (seen: 97.00 % against 98.33 %): the plain one is made again and kept then."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    answers = reference_answers(reference, validation)
    if not answers:
        return quantize(ov_model, batches)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as plain_dir:
        bounds = AdvancedAccuracyRestorerParameters(max_num_iterations=MAX_FLOAT32_GROUPS, num_ranking_workers=1,
                                                    ranking_subset_size=max(1, RANKING_IMAGES // BATCH),
                                                    intermediate_model_dir=plain_dir)
        try:
            int8 = nncf.quantize_with_accuracy_control(
                ov_model, validation_dataset=nncf.Dataset(answers, lambda item: item[0]), validation_fn=top1_agreement,
                max_drop=1 - min_agreement, drop_type=nncf.DropType.ABSOLUTE,
                advanced_accuracy_restorer_parameters=bounds, **quantization_settings(batches))
        finally:
            keep_signal_stack()
        restored_share = top1_agreement(compile_model(int8), answers)[0]
        if restored_share >= min_agreement:  # met, by the plain copy itself or after layers went back
            log.info("int8 quantized with accuracy control in %.0f s: top-1 agreement %.2f%%",
                     time.perf_counter() - start, 100 * restored_share)
            return int8
        plain = read_model(Path(plain_dir) / "intermediate_model.xml")  # before any layer went back
        plain_share = top1_agreement(compile_model(plain), answers)[0]
    log.info("int8 quantized with accuracy control in %.0f s: top-1 agreement %.2f%% (plain int8 %.2f%%)",
             time.perf_counter() - start, 100 * restored_share, 100 * plain_share)
    if restored_share >= plain_share:
        return int8
    log.info("keeping the plain int8 copy")
    return quantize(ov_model, batches)  # the same copy, its weights stored as int8 (NNCF kept them float there)


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


def save_model(ov_model, path: Path) -> None:
    import openvino as ov

    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # the default would halve weights to fp16


def with_transform(dataset: Dataset, transform) -> Dataset:
    """The same images with another transform (training images through the eval transform)."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    dataset = copy.copy(dataset)
    dataset.transform = transform
    return dataset


def pixel_batches(dataset: Dataset, limit: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(pixels, labels) batches of at most `limit` images, drawn at random when there are more (from a
    shard dataset: its first `limit`, in its own shuffled order)."""
    if isinstance(dataset, IterableDataset):
        batches = itertools.islice(make_loader(dataset, batch_size=BATCH, num_workers=0), -(-limit // BATCH))
        yield from ((images, labels) for images, labels, _ in batches if len(images))
        return
    if len(dataset) > limit:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
        dataset = Subset(dataset, sorted(order.tolist()))
    for images, labels, _ in make_loader(dataset, batch_size=BATCH, num_workers=0):
        if len(images):
            yield images, labels


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
    can run (int8_kernels.py): its own, and on a "vnni" CPU "avx2" in a capped child process."""
    own = int8_kernels()
    int8 = {own: compile_model(read_model(int8_ir))}
    with contextlib.ExitStack() as children:
        if own == VNNI:
            int8[AVX2] = children.enter_context(AVX2Runner(int8_ir))
        try:
            fp32_checked, *int8_checked = agreements(reference, [compile_model(fp32), *int8.values()], validation)
        except RuntimeError as e:  # the child failed: this CPU's own kernels still tell
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
    int8 = quantize_to_agreement(fp32, batches, model, validation)
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
