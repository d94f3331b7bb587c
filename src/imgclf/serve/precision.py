"""Which precision a model worker serves with, chosen once at start-up and logged with its figures.

`IMGCLF_PRECISION` chooses (`choose_runner`):

- `auto`: int8 when its recorded agreement with float32 on the validation set meets the threshold
  (IMGCLF_INT8_MIN_AGREEMENT, IMGCLF_INT8_MAX_ACCURACY_DROP) and this CPU's kind of int8 arithmetic
  (int8_kernels.py) keeps float32's answers: the agreement recorded for it, or, where it was not
  recorded (another x86 kind, ARM), the top-1 agreement measured again at start-up on the
  artifact's calibration images, within RECHECK_SECONDS (past them, or without those images, no
  int8). Else a reduced float precision where the processor has it and a probe batch gives the same
  answers as float32 (bfloat16; on ARM also float16, and there only when the probe also runs
  faster), else float32. It logs its choice with the numbers it used.
- `fp32`, `bf16`: as named. `int8`: the stored int8 IR; an artifact without one is quantized at
  start-up on the training images stored in it (calibration/; slower start, agreement unchecked),
  and one without those either is refused.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..artifact import openvino_runtime as openvino
from ..artifact.card import ServingFormat
from ..artifact.images import EvalTransform
from ..artifact.int8_kernels import int8_kernels
from ..names import CALIBRATION_DIR
from .runtime import INT8, Runner, RunnerFactory, calibration_photos, on_arm

log = logging.getLogger(__name__)

# bfloat16 keeps 8 bits of mantissa: on 20 real photos (bench/serve_precision_agreement.py) an
# ImageNet efficientnet_lite0 kept every top-1, its probabilities moved by up to 0.04 under torch
# autocast and 0.08 in OpenVINO's bf16 mode. On the smooth probe images they move less: refuse
# bf16 when they move more than this, or when a top-1 that float32 is sure of changes.
MAX_PROBABILITY_GAP = 0.05
# How long start-up may spend measuring int8 against float32 with this CPU's own int8 kernels when
# the artifact has no agreement recorded for them: compiling the int8 copy and running the stored
# calibration images (32) through both, checked between those steps; a few seconds for a ResNet50
# on 2 vCPUs. Past it, float32.
RECHECK_SECONDS = 20.0
RECHECK_BATCH = 8

def same_answers(fp32: np.ndarray, other: np.ndarray) -> tuple[bool, float]:
    """(agrees, largest probability gap): every top-1 that float32 is sure of is kept and no
    probability moves by more than MAX_PROBABILITY_GAP."""
    gap = float(np.abs(fp32 - other).max())
    top2 = -np.sort(-fp32, axis=1)[:, :2]
    sure = (top2[:, 0] - top2[:, -1]) > 2 * MAX_PROBABILITY_GAP
    same_top1 = bool((fp32.argmax(1) == other.argmax(1))[sure].all())
    return gap <= MAX_PROBABILITY_GAP and same_top1, gap


def measured_with(int8: ServingFormat, kernels: str) -> str:
    """Which int8 kernels the recorded agreement was measured with, for the log."""
    if not int8.by_kernels:
        return ""  # an artifact from before they were recorded
    if kernels in int8.by_kernels:
        return f" with {kernels} kernels, as this CPU's"
    return f" (the lowest of {', '.join(int8.by_kernels)} kernels; this CPU's {kernels} were not measured)"


def int8_agreement(fp32: Runner, int8: Runner, photos: np.ndarray, seconds: float) -> tuple[float | None, int]:
    """(share of `photos` whose top-1 `int8` keeps from `fp32`, images run), the share None when
    `seconds` pass first (checked between batches)."""
    start, same = time.monotonic(), 0
    for i in range(0, len(photos), RECHECK_BATCH):
        if time.monotonic() - start > seconds:
            return None, i
        batch = photos[i:i + RECHECK_BATCH]
        same += int((fp32(batch).argmax(1) == int8(batch).argmax(1)).sum())
    return (None if time.monotonic() - start > seconds else same / len(photos)), len(photos)


@dataclass
class Recheck:
    """int8 measured again at start-up with this CPU's int8 kernels, which the artifact recorded no
    agreement for."""

    found: str  # what was measured, for the log
    agreement: float | None = None  # top-1 agreement with float32; None: not measured (no images, no time)
    fp32: Runner | None = None
    int8: Runner | None = None


def recheck_int8(factory: RunnerFactory, int8: ServingFormat, kernels: str) -> Recheck:
    recorded = ", ".join(int8.by_kernels) or "unrecorded"
    what = f"int8 re-checked with this CPU's {kernels} kernels (its agreement was measured with {recorded} ones)"
    try:
        photos = calibration_photos(factory.model_dir, EvalTransform(factory.card.eval))
    except RuntimeError:
        return Recheck(f"{what}: the artifact has no calibration images ({CALIBRATION_DIR}/) to measure it on")
    fp32 = factory.fp32()  # served anyway where int8 is not
    start = time.monotonic()
    quantized = factory.int8()  # compiling it counts towards the bound
    agreement, done = int8_agreement(fp32, quantized, photos, RECHECK_SECONDS - (time.monotonic() - start))
    seconds = time.monotonic() - start
    if agreement is None:
        return Recheck(f"{what}: not finished within {RECHECK_SECONDS:.0f} s ({done} of {len(photos)} calibration "
                       f"images in {seconds:.1f} s)", None, fp32)
    return Recheck(f"{what}: top-1 agreement {agreement:.2%} with float32 on {len(photos)} calibration images in "
                   f"{seconds:.1f} s", agreement, fp32, quantized)


def choose_runner(precision: str, factory: RunnerFactory, probe: np.ndarray,
                  min_agreement: float, max_accuracy_drop: float) -> Runner:
    """The runner for IMGCLF_PRECISION=`precision` (see the module's docstring); logs why."""
    if precision in ("fp32", "bf16", "int8"):
        runner = getattr(factory, precision)()
        log.info("precision %s: %s", precision, runner.name)
        return runner
    threshold = (f"threshold: agreement >= {100 * min_agreement:.1f}%, "
                 f"accuracy drop <= {100 * max_accuracy_drop:.1f} points")
    fp32 = None
    int8 = factory.card.formats.get(INT8) if factory.device == "cpu" else None
    if int8 is None:
        reason = "the artifact has no int8 model" if factory.device == "cpu" else "int8 runs on CPUs only"
    elif not openvino.openvino_available():
        reason = "OpenVINO is not installed"
    elif (checked := int8.agreement_on(kernels := int8_kernels())) is None:
        reason = "int8 was never checked on labelled images"
    elif not checked.meets(min_agreement, max_accuracy_drop):
        reason = f"int8 {checked}{measured_with(int8, kernels)} misses the threshold"
    elif kernels in int8.by_kernels:
        log.info("precision auto: int8, %s%s (%s)", checked, measured_with(int8, kernels), threshold)
        return factory.int8()
    else:
        recheck = recheck_int8(factory, int8, kernels)
        if recheck.agreement is not None and recheck.agreement >= min_agreement:
            log.info("precision auto: int8, %s; recorded: %s (%s)", recheck.found, checked, threshold)
            return recheck.int8
        fp32 = recheck.fp32
        reason = recheck.found if recheck.agreement is None else (
            f"{recheck.found}, under the threshold of {100 * min_agreement:.1f}%")
    return reduced_or_fp32(factory, fp32 or factory.fp32(), probe, reason)


def probe_seconds(runner: Runner, probe: np.ndarray, repeats: int = 3) -> float:
    """The fastest of `repeats` runs over the probe batch, after one to warm up."""
    runner(probe)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(probe)
        times.append(time.perf_counter() - start)
    return min(times)


PRECISION_NAMES = {"bf16": "bfloat16", "f16": "float16"}


def reduced_or_fp32(factory: RunnerFactory, fp32: Runner, probe: np.ndarray, reason: str) -> Runner:
    """A reduced float precision that gives float32's answers on the probe batch (on ARM: and runs
    it faster), else `fp32`; logs the choice with `reason` (why not int8)."""
    precisions = factory.reduced_precisions()
    if not precisions:
        log.info("precision auto: %s (%s; no bfloat16 on this processor)", fp32.name, reason)
        return fp32
    expected, notes = fp32(probe), []
    for precision in precisions:
        name = PRECISION_NAMES[precision]
        try:
            runner = factory.reduced(precision)
            agrees, gap = same_answers(expected, runner(probe))
        except RuntimeError as e:  # OpenVINO can lack bf16 kernels (seen with ONEDNN_MAX_CPU_ISA=AVX2: none for max-pool)
            notes.append(f"{name} failed to run: {str(e).strip()[:300]}")
            continue
        note = (f"{name} vs float32 on {len(probe)} probe images: largest probability gap {gap:.4f}, "
                f"{'agrees' if agrees else 'differs'}")
        if agrees and on_arm():  # no measured speed-up there to take a reduced precision for
            reduced_s, fp32_s = probe_seconds(runner, probe), probe_seconds(fp32, probe)
            agrees = reduced_s < fp32_s
            note += f", {1000 * reduced_s:.0f} ms against float32's {1000 * fp32_s:.0f} ms"
        notes.append(note)
        if agrees:
            log.info("precision auto: %s (%s; %s)", runner.name, reason, "; ".join(notes))
            return runner
    log.info("precision auto: %s (%s; %s)", fp32.name, reason, "; ".join(notes))
    return fp32
