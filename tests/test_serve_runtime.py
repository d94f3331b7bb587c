import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from serve_support import make_artifact
from test_export import exported  # noqa: F401  (the fixture: an artifact with its OpenVINO formats)

from imgclf.artifact import export, openvino_runtime
from imgclf.artifact.card import Agreement, load_card, write_card
from imgclf.artifact.images import EvalTransform, probe_batch
from imgclf.artifact.int8_kernels import AVX2_ENVIRON, int8_kernels
from imgclf.serve import precision, runtime, torch_runner
from imgclf.serve.precision import choose_runner
from imgclf.serve.runtime import RunnerFactory

pytestmark = [pytest.mark.openvino,
              pytest.mark.skipif(not export.openvino_available(), reason="needs the openvino extra")]
CPU = "cpu"


def factory(model_dir, card=None):
    return RunnerFactory(model_dir, card or load_card(model_dir), CPU, threads=1)


def probe(card):
    return probe_batch(4, EvalTransform(card.eval))


def with_int8_agreement(card, **numbers):
    agreement = Agreement(**{"images": 200, "top1_agreement": 0.995, "accuracy": 0.9, "fp32_accuracy": 0.902, **numbers})
    int8 = replace(card.formats["openvino_int8"], agreement=agreement, by_kernels={int8_kernels(): agreement})
    return replace(card, formats={**card.formats, "openvino_int8": int8})


def choose(model_dir, card, precision="auto", bf16=False):
    with mock.patch.object(RunnerFactory, "bf16_supported", return_value=bf16):
        return choose_runner(precision, factory(model_dir, card), probe(card), 0.99, 0.005)


def test_auto_serves_int8_when_its_recorded_agreement_meets_the_threshold(exported, caplog):
    model_dir, _, card, _ = exported
    caplog.set_level(logging.INFO)
    runner = choose(model_dir, with_int8_agreement(card), bf16=True)
    assert runner.name == "openvino int8"
    assert "top-1 agreement 99.50%" in caplog.text and "agreement >= 99.0%" in caplog.text


@pytest.mark.parametrize("numbers", [{"top1_agreement": 0.98}, {"accuracy": 0.89}])
def test_auto_falls_back_to_openvino_bf16_then_fp32_when_int8_misses_it(exported, caplog, numbers):
    model_dir, _, card, _ = exported
    caplog.set_level(logging.INFO)
    card = with_int8_agreement(card, **numbers)
    assert choose(model_dir, card, bf16=True).name == "openvino bf16"
    assert "misses the threshold" in caplog.text and "largest probability gap" in caplog.text
    assert choose(model_dir, card, bf16=False).name == "openvino fp32"
    assert "no bfloat16 on this processor" in caplog.text
    # answers that differ (a CPU without bf16 kernels runs the bf16 hint in float32: they never would)
    with mock.patch.object(precision, "same_answers", return_value=(False, 0.3)):
        assert choose(model_dir, card, bf16=True).name == "openvino fp32"
    assert "largest probability gap 0.3000, differs" in caplog.text


def test_auto_serves_fp32_when_bf16_fails_to_run(exported, caplog):
    model_dir, _, card, _ = exported
    caplog.set_level(logging.INFO)
    with mock.patch.object(RunnerFactory, "bf16", side_effect=RuntimeError("no bf16 primitives")):
        assert choose(model_dir, with_int8_agreement(card, top1_agreement=0.5), bf16=True).name == "openvino fp32"
    assert "bfloat16 failed to run: no bf16 primitives" in caplog.text


def test_auto_reads_the_agreement_measured_with_this_cpus_int8_kernels(exported, caplog):
    """A copy can keep float32's answers with exact int32 sums (vnni) and miss with AVX2's saturating
    ones: each CPU judges it by the number for its own arithmetic; one whose arithmetic was not
    measured first asks the lowest recorded to meet the threshold."""
    model_dir, _, card, _ = exported
    vnni, avx2 = (Agreement(300, share, 0.67, 0.67) for share in (0.9933, 0.9867))
    int8 = replace(card.formats["openvino_int8"], agreement=avx2, by_kernels={"vnni": vnni, "avx2": avx2})
    card = replace(card, formats={**card.formats, "openvino_int8": int8})
    caplog.set_level(logging.INFO)
    for kernels, served in (("vnni", "openvino int8"), ("avx2", "openvino fp32"), ("aarch64", "openvino fp32")):
        # the lowest (avx2's) misses: no start-up re-check for aarch64
        with mock.patch.object(precision, "int8_kernels", return_value=kernels):
            assert choose(model_dir, card).name == served
    assert "int8, top-1 agreement 99.33%" in caplog.text and "with vnni kernels, as this CPU's" in caplog.text
    assert "98.67% and accuracy 67.00% (float32 67.00%) on 300 validation images with avx2 kernels" in caplog.text
    assert "the lowest of vnni, avx2 kernels; this CPU's aarch64 were not measured" in caplog.text


def test_auto_on_a_torch_artifact_takes_bf16_where_it_agrees(tmp_path, caplog):
    model_dir = make_artifact(tmp_path / "model")
    card = load_card(model_dir)
    caplog.set_level(logging.INFO)
    assert choose(model_dir, card, bf16=True).name == "torch bf16 on cpu"
    assert "the artifact has no int8 model" in caplog.text and "largest probability gap" in caplog.text
    assert choose(model_dir, card, bf16=False).name == "torch fp32 on cpu"
    assert "no bfloat16 on this processor" in caplog.text


def test_auto_keeps_fp32_when_bf16_changes_the_answers(tmp_path):
    model_dir = make_artifact(tmp_path / "model")
    with mock.patch.object(precision, "MAX_PROBABILITY_GAP", 0.0):
        assert choose(model_dir, load_card(model_dir), bf16=True).name == "torch fp32 on cpu"


def test_forced_precisions_use_the_stored_formats(exported):
    model_dir, model, card, _ = exported
    pixels = probe(card)
    with torch.no_grad():
        expected = model(torch.from_numpy(pixels)).softmax(1).numpy()
    runners = {p: choose(model_dir, with_int8_agreement(card, top1_agreement=0.1), p) for p in ("fp32", "bf16", "int8")}
    assert {p: r.name for p, r in runners.items()} == {"fp32": "openvino fp32", "bf16": "openvino bf16",
                                                        "int8": "openvino int8"}
    assert np.allclose(runners["fp32"](pixels), expected, atol=1e-5)  # exact path: float32's answers
    for r in runners.values():
        probs = r(pixels)
        assert probs.shape == expected.shape and np.allclose(probs.sum(1), np.ones(len(pixels)), atol=1e-5)


def test_openvino_formats_load_without_the_pickled_weights(exported):
    model_dir, _, card, _ = exported
    with mock.patch.object(torch, "load", side_effect=AssertionError("torch.load called")):
        for precision in ("fp32", "bf16", "int8"):
            choose(model_dir, card, precision)


def test_artifact_without_openvino_formats_is_served_by_torch(tmp_path, caplog):
    model_dir = make_artifact(tmp_path / "model")
    card = load_card(model_dir)
    assert choose(model_dir, card, bf16=False).name == "torch fp32 on cpu"
    assert choose(model_dir, card, "bf16").name == "torch bf16 on cpu"
    # forced int8 calibrates only on images that come with the artifact: none here
    with pytest.raises(RuntimeError, match="neither an int8 model nor calibration images"):
        choose(model_dir, card, "int8")
    (model_dir / "calibration").mkdir()
    for i, colour in enumerate(("red", "green", "blue", "white")):
        Image.new("RGB", (40, 36), colour).save(model_dir / "calibration" / f"{i:02d}.jpg")
    caplog.set_level(logging.WARNING)
    int8 = choose(model_dir, card, "int8")  # quantized at start-up, with a warning
    assert int8.name.startswith("openvino int8") and "unchecked" in caplog.text
    assert "on its 4 calibration images" in caplog.text
    assert int8(probe(card)).shape == (4, len(card.classes))


def test_a_gpu_worker_stays_on_torch(exported):
    model_dir, _, card, _ = exported
    f = RunnerFactory(model_dir, with_int8_agreement(card), "cuda:0", threads=1)
    assert not f.use_openvino
    with mock.patch.object(RunnerFactory, "bf16_supported", return_value=False), \
            mock.patch.object(torch_runner, "TorchRunner") as runner:
        choose_runner("auto", f, probe(card), 0.99, 0.005)
    assert runner.call_args.kwargs == {"autocast": False, "threads": 1}


def test_written_card_round_trips_the_agreement(exported, tmp_path):
    _, _, card, _ = exported
    card = with_int8_agreement(card, accuracy=0.85)
    write_card(tmp_path, card)
    loaded = load_card(tmp_path).formats["openvino_int8"].agreement
    assert loaded.accuracy_drop == pytest.approx(0.052)
    assert not loaded.meets(0.99, 0.005) and loaded.meets(0.99, 0.06)


# -- int8 on a CPU whose int8 arithmetic the artifact recorded no agreement for: measured again at start-up

def recorded_elsewhere(card, kernels="vnni"):
    """The card as a CPU of another kind wrote it: int8 agreement recorded (and meeting the threshold)
    with `kernels` alone."""
    agreement = Agreement(200, 0.995, 0.9, 0.902)
    int8 = replace(card.formats["openvino_int8"], agreement=agreement, by_kernels={kernels: agreement})
    return replace(card, formats={**card.formats, "openvino_int8": int8})


def calibration_agreement(model_dir, card) -> float:
    """The top-1 agreement of the stored int8 IR with the float32 one on the stored calibration images."""
    photos = runtime.calibration_photos(model_dir, EvalTransform(card.eval))
    f = factory(model_dir, card)
    return float((f.fp32()(photos).argmax(1) == f.int8()(photos).argmax(1)).mean())


@pytest.mark.parametrize("min_agreement", [0.0, 0.99])
def test_auto_measures_int8_again_with_kernels_the_artifact_did_not_record(exported, caplog, min_agreement):
    model_dir, _, card, _ = exported
    card = recorded_elsewhere(card)
    images = len(list((model_dir / "calibration").glob("*.jpg")))
    agreement = calibration_agreement(model_dir, card)
    caplog.set_level(logging.INFO)
    with mock.patch.object(precision, "int8_kernels", return_value="aarch64"), \
            mock.patch.object(RunnerFactory, "bf16_supported", return_value=False):
        runner = choose_runner("auto", factory(model_dir, card), probe(card), min_agreement, 0.005)
    assert runner.name == ("openvino int8" if agreement >= min_agreement else "openvino fp32")
    assert (f"int8 re-checked with this CPU's aarch64 kernels (its agreement was measured with vnni ones): "
            f"top-1 agreement {agreement:.2%} with float32 on {images} calibration images in ") in caplog.text
    if runner.name == "openvino fp32":
        assert f"under the threshold of {100 * min_agreement:.1f}%" in caplog.text


def test_a_recheck_under_the_threshold_serves_fp32(exported, caplog):
    model_dir, _, card, _ = exported
    caplog.set_level(logging.INFO)
    with mock.patch.object(precision, "int8_kernels", return_value="aarch64"), \
            mock.patch.object(precision, "int8_agreement", return_value=(0.5, 18)):
        assert choose(model_dir, recorded_elsewhere(card)).name == "openvino fp32"
    assert "top-1 agreement 50.00% with float32 on" in caplog.text and "under the threshold of 99.0%" in caplog.text


def test_a_recheck_past_its_time_serves_fp32(exported, caplog):
    model_dir, _, card, _ = exported
    caplog.set_level(logging.INFO)
    with mock.patch.object(precision, "int8_kernels", return_value="aarch64"), \
            mock.patch.object(precision, "RECHECK_SECONDS", 0.0), \
            mock.patch.object(RunnerFactory, "bf16_supported", return_value=False):
        runner = choose_runner("auto", factory(model_dir, card), probe(card), 0.0, 1.0)  # any agreement would do
    assert runner.name == "openvino fp32"
    assert "not finished within 0 s (0 of" in caplog.text


def test_without_calibration_images_there_is_no_recheck_and_no_int8(exported, tmp_path, caplog):
    model_dir, _, card, _ = exported
    bare = tmp_path / "model"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("calibration"))
    caplog.set_level(logging.INFO)
    with mock.patch.object(precision, "int8_kernels", return_value="aarch64"):
        assert choose(bare, recorded_elsewhere(card)).name == "openvino fp32"
    assert "the artifact has no calibration images (calibration/) to measure it on" in caplog.text


def test_a_vnni_measured_int8_copy_is_measured_again_under_avx2_kernels(exported, tmp_path):
    """oneDNN capped to AVX2 (ONEDNN_MAX_CPU_ISA, as on an AVX2-only host) makes this host's kind
    "avx2": an artifact that recorded vnni alone is measured again with the real AVX2 arithmetic."""
    model_dir, _, card, _ = exported
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    write_card(copy, recorded_elsewhere(card, "vnni"))
    script = ("import logging, sys\n"
              "from imgclf.artifact.card import load_card\n"
              "from imgclf.artifact.images import EvalTransform, probe_batch\n"
              "from imgclf.serve.precision import choose_runner\nfrom imgclf.serve.runtime import RunnerFactory\n"
              "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
              f"card = load_card({str(copy)!r})\n"
              f"f = RunnerFactory({str(copy)!r}, card, 'cpu', threads=1)\n"
              "print('served by', choose_runner('auto', f, probe_batch(4, EvalTransform(card.eval)), 0.0, 1.0).name)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **AVX2_ENVIRON})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("precision auto: int8, int8 re-checked with this CPU's avx2 kernels (its agreement was measured with "
            "vnni ones): top-1 agreement ") in proc.stdout
    assert "served by openvino int8" in proc.stdout  # any agreement meets a threshold of 0


# -- reduced float precisions on ARM: taken only where the probe shows them agreeing and faster

def test_on_arm_a_reduced_precision_must_also_be_faster(exported, caplog):
    model_dir, _, card, _ = exported
    card = with_int8_agreement(card, top1_agreement=0.5)
    caplog.set_level(logging.INFO)
    with mock.patch.object(runtime, "on_arm", return_value=True), mock.patch.object(precision, "on_arm", return_value=True):
        assert factory(model_dir, card).reduced_precisions() == (
            ["bf16"] * openvino_runtime.bf16_supported() + ["f16"] * openvino_runtime.f16_supported())
        with mock.patch.object(precision, "probe_seconds", side_effect=lambda runner, _: 1.0 if "fp32" in runner.name else 2.0):
            assert choose(model_dir, card, bf16=True).name == "openvino fp32"
        assert "2000 ms against float32's 1000 ms" in caplog.text
        with mock.patch.object(precision, "probe_seconds", side_effect=lambda runner, _: 1.0 if "fp32" in runner.name else 0.5):
            assert choose(model_dir, card, bf16=True).name == "openvino bf16"
        assert "500 ms against float32's 1000 ms" in caplog.text
