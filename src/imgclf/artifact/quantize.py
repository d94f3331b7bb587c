"""Post-training int8 quantization of an OpenVINO IR with NNCF, and accuracy control until the int8
copy keeps enough of float32's top-1 answers. Torch-free: the answers come in as arrays.

On a CPU with exact int8 sums ("vnni", int8_kernels.py) accuracy control runs in a child process
whose oneDNN is capped to AVX2 (`quantize_with_avx2_kernels`), so the layers it keeps in float32
are the ones that matter with AVX2's saturating sums as well: a copy brought to 99.33 % there kept
99.33 % with both kinds, where one brought there with VNNI's kept 98.67 % with AVX2's. Endpoint
hosts without VNNI are common (the Skylake generation of ml.m5 and ml.c5).

    python -m imgclf.artifact.quantize DIR    # the child: DIR/model.xml and DIR/arrays.npz in, DIR/model_int8.xml out

NNCF starts OpenVINO's CPU plugin: each call is followed by `keep_signal_stack` (signalstack.py).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..names import LOG_FORMAT
from .int8_kernels import AVX2_ENVIRON, CAP_ENV
from .openvino_runtime import FILES, FP32_FORMAT, INT8_FORMAT, compile_model, read_model, save_model
from .signalstack import keep_signal_stack

log = logging.getLogger(__spec__.name)  # imgclf.artifact.quantize under `python -m` too

FULL_BIAS_CORRECTION_IMAGES = 100
RANKING_IMAGES = 64  # of the validation images, the ones accuracy control ranks layers on: the most changed by int8
MAX_FLOAT32_GROUPS = 10  # groups of layers put back to float32 at most: bounds the time it takes

# (pixels, float32 top-1) batches: the validation images and the answers the int8 copy should keep
Answers = list[tuple[np.ndarray, np.ndarray]]


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


def top1_agreement(compiled, answers: Answers) -> tuple[float, None]:
    """The share of float32's top-1 answers that `compiled` gives (NNCF's validation_fn shape)."""
    same = sum(int((np.asarray(compiled(pixels)[0]).argmax(1) == top1).sum()) for pixels, top1 in answers)
    return same / max(1, sum(len(top1) for _, top1 in answers)), None


def quantize_to_agreement(ov_model, batches: list[np.ndarray], answers: Answers, min_agreement: float):
    """`quantize` with NNCF's accuracy control: where the int8 copy's top-1 agreement with float32 on
    `answers` is below `min_agreement`, it ranks the groups of quantized layers by how much they
    change the answers and puts the worst back to float32, one group per iteration, until the
    agreement is met or MAX_FLOAT32_GROUPS iterations have run (the copy is then recorded below the
    threshold, and `auto` serves float32). Ranking compiles and evaluates the model once per group
    (55 on a ResNet50), and again after a step that made things worse: RANKING_IMAGES keep that short.
    NNCF returns the copy of its last iteration, which can agree less than the plain int8 copy it
    started from (seen: 97.00 % against 98.33 %): the plain one is made again and kept then."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    if not answers:
        return quantize(ov_model, batches)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as plain_dir:
        bounds = AdvancedAccuracyRestorerParameters(max_num_iterations=MAX_FLOAT32_GROUPS, num_ranking_workers=1,
                                                    ranking_subset_size=max(1, RANKING_IMAGES // len(answers[0][1])),
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


def quantize_with_avx2_kernels(ov_model, batches: list[np.ndarray], answers: Answers, min_agreement: float):
    """`quantize_to_agreement` in a child process whose oneDNN is capped to AVX2. Raises RuntimeError
    if the child fails (its log and error go to this process's stdout and stderr)."""
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        save_model(ov_model, work / FILES[FP32_FORMAT])
        arrays = {f"calibration_{i}": b for i, b in enumerate(batches)}
        for i, (pixels, top1) in enumerate(answers):
            arrays[f"pixels_{i}"], arrays[f"top1_{i}"] = pixels, top1
        np.savez(work / "arrays.npz", min_agreement=np.float64(min_agreement), **arrays)
        child = subprocess.run([sys.executable, "-m", __name__, str(work)], env={**os.environ, **AVX2_ENVIRON})
        if child.returncode:
            raise RuntimeError(f"quantizing with AVX2 kernels failed (exit {child.returncode})")
        return read_model(work / FILES[INT8_FORMAT])


def numbered(arrays, prefix: str) -> list[np.ndarray]:
    """The arrays saved as prefix_0, prefix_1, ..., in that order."""
    return [arrays[f"{prefix}_{i}"] for i in range(sum(name.startswith(prefix + "_") for name in arrays.files))]


def main(work: Path) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format=LOG_FORMAT)
    with np.load(work / "arrays.npz") as arrays:
        batches = numbered(arrays, "calibration")
        answers = list(zip(numbered(arrays, "pixels"), numbered(arrays, "top1")))
        min_agreement = float(arrays["min_agreement"])
    log.info("accuracy control with avx2 kernels (%s=%s)", CAP_ENV, os.environ.get(CAP_ENV))
    int8 = quantize_to_agreement(read_model(work / FILES[FP32_FORMAT]), batches, answers, min_agreement)
    save_model(int8, work / FILES[INT8_FORMAT])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
