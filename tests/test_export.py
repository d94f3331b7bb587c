import json
import subprocess
import sys

import pytest
import torch
from conftest import make_image_folder
from torch.utils.data import Subset

from imgclf.artifact import export, quantize
from imgclf.artifact.card import ModelCard, load_card
from imgclf.artifact.images import EvalSettings
from imgclf.artifact.int8_kernels import AVX2, VNNI, AVX2Runner, ChildEnded, int8_kernels
from imgclf.artifact.network import create_model, save_artifact
from imgclf.train.data import ImageFolderDataset, find_classes
from imgclf.train.presets import ClassificationPresetEval, ClassificationPresetTrain

pytestmark = [pytest.mark.openvino,
              pytest.mark.skipif(not export.openvino_available(), reason="needs the openvino extra")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small trained-looking artifact with its OpenVINO formats, as training leaves it."""
    root = tmp_path_factory.mktemp("export")
    for split, seed in (("train", 0), ("valid", 1)):
        make_image_folder(root / split, per_class=6, seed=seed)
    classes = find_classes(root / "train")
    settings = EvalSettings.for_image_size(32)
    eval_tf = ClassificationPresetEval.from_settings(settings)
    torch.manual_seed(0)
    model = create_model("resnet18", len(classes)).eval()
    card = ModelCard("resnet18", tuple(classes), settings)
    save_artifact(root / "model", model, card)
    train = ImageFolderDataset(root / "train", classes, ClassificationPresetTrain(crop_size=32))
    valid = ImageFolderDataset(root / "valid", classes, eval_tf)
    written = export.export_serving_formats(root / "model", model, card, export.with_transform(train, eval_tf), valid,
                                            calibration_images=10)
    return root / "model", model, written, valid


def test_formats_and_their_agreement_are_recorded_in_model_json(exported):
    model_dir, _, written, valid = exported
    card = load_card(model_dir)
    assert card.to_dict() == written.to_dict()
    assert set(card.formats) == {"openvino_fp32", "openvino_int8"}
    fp32, int8 = card.formats["openvino_fp32"], card.formats["openvino_int8"]
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert int8.calibration_images == 10  # at most the images asked for
    for f in (fp32, int8):
        assert (model_dir / f.file).is_file() and (model_dir / f.file).with_suffix(".bin").is_file()
        assert f.agreement.images == len(valid)
        assert f.agreement.fp32_accuracy == fp32.agreement.fp32_accuracy
    assert fp32.agreement.top1_agreement == 1.0 and fp32.agreement.accuracy_drop == 0  # the same network
    raw = json.loads((model_dir / "model.json").read_text())["formats"]["openvino_int8"]
    assert set(raw["agreement"]) == {"images", "top1_agreement", "accuracy", "fp32_accuracy", "accuracy_drop"}
    # checked with this CPU's int8 arithmetic and, where that is VNNI's, with AVX2's too; the lowest is `agreement`
    own = int8_kernels()
    assert set(int8.by_kernels) == ({own, AVX2} if own == VNNI else {own})
    assert int8.agreement == min(int8.by_kernels.values(), key=lambda a: a.top1_agreement)
    assert fp32.by_kernels == {}  # float32 arithmetic is the same everywhere


class EndingChild:
    """An AVX2 child process that ends before it answers."""

    def __init__(self, ir):
        pass

    def __call__(self, pixels):
        raise ChildEnded("the AVX2 child process ended (exit 1)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def check_on_host(exported, monkeypatch, kernels: str):
    """check_formats as a host whose int8 kernels are `kernels` runs it."""
    model_dir, model, card, valid = exported
    monkeypatch.setattr(export, "int8_kernels", lambda: kernels)
    fp32 = export.read_model(model_dir / card.formats["openvino_fp32"].file)
    return export.check_formats(model, fp32, model_dir / card.formats["openvino_int8"].file, valid)


@pytest.mark.parametrize("kernels", [AVX2, "aarch64"])
def test_int8_is_checked_with_the_hosts_own_kernels_alone_where_it_has_no_other(exported, monkeypatch, kernels):
    """An AVX2-only x86 host and an arm64 host have one kind of int8 arithmetic: no child, one check."""
    monkeypatch.setattr(export, "AVX2Runner", EndingChild)  # would fail the check if it were started
    fp32_checked, int8_checked = check_on_host(exported, monkeypatch, kernels)
    assert set(int8_checked) == {kernels} and fp32_checked.top1_agreement == 1.0
    assert int8_checked[kernels].images == len(exported[3])


def test_int8_is_still_checked_with_this_cpus_kernels_when_the_avx2_child_ends(exported, monkeypatch, caplog):
    monkeypatch.setattr(export, "AVX2Runner", EndingChild)
    fp32_checked, int8_checked = check_on_host(exported, monkeypatch, VNNI)
    assert set(int8_checked) == {VNNI} and fp32_checked.top1_agreement == 1.0
    assert "int8 not checked with avx2 kernels: the AVX2 child process ended (exit 1)" in caplog.text


@pytest.mark.parametrize("kernels", [VNNI, AVX2, "aarch64"])
def test_a_check_that_fails_raises_its_own_error(exported, monkeypatch, kernels):
    """Only the child's ending is retried: any other failure reaches the caller as it was raised, even
    where a second try would pass (and record too few checks)."""
    calls = []
    agreements = export.agreements

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory in the int8 check")
        return agreements(*args, **kwargs)

    monkeypatch.setattr(export, "agreements", failing_once)
    monkeypatch.setattr(export, "AVX2Runner", EndingChild)
    with pytest.raises(RuntimeError, match="^out of memory in the int8 check$"):
        check_on_host(exported, monkeypatch, kernels)


def test_stored_files_are_an_xml_graph_and_raw_weights(exported):
    model_dir, _, card, _ = exported
    for f in card.formats.values():
        assert (model_dir / f.file).read_bytes().startswith(b"<?xml")
    # the int8 weights take about a quarter of the float32 ones
    sizes = {name: (model_dir / f.file).with_suffix(".bin").stat().st_size for name, f in card.formats.items()}
    assert sizes["openvino_int8"] < 0.4 * sizes["openvino_fp32"]


def test_float32_copy_gives_the_networks_answers(exported):
    model_dir, model, card, _ = exported
    compiled = export.compile_model(export.read_model(model_dir / card.formats["openvino_fp32"].file), threads=1)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixels)
    assert torch.allclose(torch.from_numpy(compiled(pixels.numpy())[0]), expected, atol=1e-4)


def test_agreement_counts_top1_matches_and_accuracy(exported):
    _, model, _, valid = exported

    class Constant:  # a "compiled model" that always answers class 0
        def __call__(self, pixels):
            logits = torch.zeros(len(pixels), 3)
            logits[:, 0] = 1
            return [logits.numpy()]

    with torch.no_grad():
        fp32 = torch.cat([model(x).argmax(1) for x, _ in export.pixel_batches(valid, 100)])
    labels = torch.tensor(valid.targets)
    a = export.agreement(model, Constant(), valid)
    assert a.images == len(valid)
    assert a.top1_agreement == pytest.approx((fp32 == 0).float().mean().item())
    assert a.accuracy == pytest.approx((labels == 0).float().mean().item())
    assert a.fp32_accuracy == pytest.approx((fp32 == labels).float().mean().item())


def test_artifact_carries_a_few_training_images_for_calibration(exported):
    """Small: 18 training images here (at most 32), their short side at the eval resize size."""
    from PIL import Image

    model_dir, _, card, _ = exported
    stored = sorted((model_dir / export.CALIBRATION_DIR).glob("*.jpg"))
    assert len(stored) == 18
    for path in stored:
        with Image.open(path) as img:
            assert img.format == "JPEG" and min(img.size) <= card.eval.resize_size


@pytest.mark.slow
def test_accuracy_aware_quantization_meets_the_agreement_that_plain_int8_misses(exported):
    """A random network's answers hang on small differences, so plain int8 changes some; accuracy
    control puts layers back to float32 until all of them agree (the threshold asked here)."""
    model_dir, model, card, valid = exported
    fp32 = export.read_model(model_dir / card.formats["openvino_fp32"].file)
    batches = [pixels.numpy() for pixels, _ in export.pixel_batches(valid, 12)]
    answers = export.reference_answers(model, valid)
    plain, _ = quantize.top1_agreement(export.compile_model(quantize.quantize(fp32, batches)), answers)
    assert plain < 1.0  # else this test shows nothing
    int8 = quantize.quantize_to_agreement(fp32, batches, answers, min_agreement=1.0)
    assert quantize.top1_agreement(export.compile_model(int8), answers)[0] == 1.0


@pytest.mark.slow
def test_accuracy_control_never_ends_below_the_plain_int8_copy(exported, monkeypatch):
    """NNCF returns its last iteration's copy, which can agree less than where it started: then the
    plain copy is what comes back (here NNCF's answer is replaced by a copy calibrated on black images)."""
    import nncf

    model_dir, model, card, valid = exported
    fp32 = export.read_model(model_dir / card.formats["openvino_fp32"].file)
    batches = [pixels.numpy() for pixels, _ in export.pixel_batches(valid, 12)]
    answers = export.reference_answers(model, valid)
    worse = quantize.quantize(fp32, [0 * batches[0]])
    real = nncf.quantize_with_accuracy_control

    def ends_worse(*args, **kwargs):
        real(*args, **kwargs)  # leaves the plain copy in intermediate_model_dir
        return worse

    plain = quantize.top1_agreement(export.compile_model(quantize.quantize(fp32, batches)), answers)[0]
    assert quantize.top1_agreement(export.compile_model(worse), answers)[0] < plain  # else this test shows nothing
    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", ends_worse)
    int8 = quantize.quantize_to_agreement(fp32, batches, answers, min_agreement=1.0)
    assert quantize.top1_agreement(export.compile_model(int8), answers)[0] == plain
    assert quantized_tensors(int8) == quantized_tensors(quantize.quantize(fp32, batches))


@pytest.mark.slow
def test_accuracy_control_in_the_avx2_child_meets_the_agreement_with_avx2_kernels(exported, tmp_path, capfd):
    """The child gets the network, the calibration batches, the answers and the threshold, and
    judges with AVX2's arithmetic: its copy keeps all answers when run with AVX2 kernels."""
    model_dir, model, card, valid = exported
    fp32 = export.read_model(model_dir / card.formats["openvino_fp32"].file)
    batches = [pixels.numpy() for pixels, _ in export.pixel_batches(valid, 12)]
    answers = export.reference_answers(model, valid)
    export.save_model(quantize.quantize(fp32, batches), tmp_path / "plain.xml")
    with AVX2Runner(tmp_path / "plain.xml") as plain:  # else this test shows nothing
        assert quantize.top1_agreement(plain, answers)[0] < 1.0
    int8 = quantize.quantize_with_avx2_kernels(fp32, batches, answers, min_agreement=1.0)
    assert "accuracy control with avx2 kernels (ONEDNN_MAX_CPU_ISA=AVX2)" in capfd.readouterr().out
    export.save_model(int8, tmp_path / "int8.xml")
    with AVX2Runner(tmp_path / "int8.xml") as restored:
        assert quantize.top1_agreement(restored, answers)[0] == 1.0


def test_a_failing_avx2_child_is_a_clear_error(exported, monkeypatch):
    model_dir, _, card, _ = exported
    fp32 = export.read_model(model_dir / card.formats["openvino_fp32"].file)
    monkeypatch.setattr(sys, "executable", "false")
    with pytest.raises(RuntimeError, match=r"quantizing with AVX2 kernels failed \(exit 1\)"):
        quantize.quantize_with_avx2_kernels(fp32, [], [], min_agreement=1.0)


@pytest.mark.parametrize("kernels, child_fails, quantized_by", [
    (VNNI, False, "the avx2 child"), (VNNI, True, "this process"), (AVX2, False, "this process"),
    ("aarch64", False, "this process")])
def test_accuracy_control_runs_with_avx2_kernels_on_a_vnni_cpu(monkeypatch, caplog, kernels, child_fails, quantized_by):
    """AVX2's sums saturate where VNNI's do not, so a copy good enough there is good enough on both;
    a failing child leaves this CPU's own kernels, with a warning."""
    def child(*args):
        if child_fails:
            raise RuntimeError("quantizing with AVX2 kernels failed (exit 1)")
        return "the avx2 child"

    monkeypatch.setattr(export, "int8_kernels", lambda: kernels)
    monkeypatch.setattr(export, "quantize_with_avx2_kernels", child)
    monkeypatch.setattr(export, "quantize_to_agreement", lambda *args: "this process")
    assert export.quantize_for_serving("ir", [], [("pixels", "top1")]) == quantized_by
    assert ("quantizing with AVX2 kernels failed (exit 1); quantizing with this CPU's vnni kernels" in caplog.text) \
        == child_fails
    assert export.quantize_for_serving("ir", [], []) == "this process"  # no validation images: nothing to control


def quantized_tensors(ov_model) -> int:
    """Activation quantizers and int8 weights: what a layer put back to float32 loses."""
    return sum(op.get_type_name() == "FakeQuantize" or (op.get_type_name() == "Constant"
               and op.get_output_element_type(0).get_type_name() in ("i8", "u8")) for op in ov_model.get_ops())


@pytest.mark.slow
def test_accuracy_control_puts_back_at_most_max_float32_groups(exported, tmp_path, monkeypatch):
    """Its time is bounded: on 150 images, where a random network's answers hang on many small
    differences, it stops after MAX_FLOAT32_GROUPS groups of layers are back in float32 (one per
    iteration; a step that made things worse is undone once, the next one kept) and returns that copy."""
    model_dir, model, card, _ = exported
    make_image_folder(tmp_path, per_class=50, seed=2)
    valid = ImageFolderDataset(tmp_path, card.classes, ClassificationPresetEval.from_settings(card.eval))
    fp32 = export.read_model(model_dir / card.formats["openvino_fp32"].file)
    batches = [pixels.numpy() for pixels, _ in export.pixel_batches(valid, 12)]
    answers = export.reference_answers(model, valid)

    def quantized_ops(max_groups: int) -> tuple[int, float]:
        monkeypatch.setattr(quantize, "MAX_FLOAT32_GROUPS", max_groups)
        int8 = quantize.quantize_to_agreement(fp32, batches, answers, min_agreement=1.0)
        return quantized_tensors(int8), quantize.top1_agreement(export.compile_model(int8), answers)[0]

    (one, agreement), (three, _) = quantized_ops(1), quantized_ops(3)
    assert quantized_tensors(quantize.quantize(fp32, batches)) > one > three > 0
    assert agreement < 1.0  # stopped short of the threshold


def test_with_transform_keeps_the_subset_and_leaves_the_original_alone(tmp_path):
    make_image_folder(tmp_path / "train", per_class=2)
    classes = find_classes(tmp_path / "train")
    train_tf = ClassificationPresetTrain(crop_size=32)
    eval_tf = ClassificationPresetEval.from_settings(EvalSettings.for_image_size(32))
    subset = Subset(ImageFolderDataset(tmp_path / "train", classes, train_tf), [1, 4])
    swapped = export.with_transform(subset, eval_tf)
    assert swapped.indices == [1, 4] and swapped.dataset.transform is eval_tf
    assert subset.dataset.transform is train_tf


def test_without_openvino_the_artifact_keeps_the_torch_weights_only(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(export, "openvino_available", lambda calibration=False: False)
    card = ModelCard("resnet18", ("a", "b"), EvalSettings.for_image_size(32))
    assert export.export_serving_formats(tmp_path, create_model("resnet18", 2), card, [], []) is card
    assert "openvino" in caplog.text and not list(tmp_path.iterdir())


def test_signals_are_handled_after_openvino_plugins_went_in_any_order():
    """OpenVINO's CPU plugin leaves the thread on an unmapped alternate signal stack when two
    plugins go first in, first out; a signal handled then killed the process (SIGSEGV)."""
    script = (
        "import os, signal, sys, torch; from imgclf.artifact import network, openvino_runtime as ov; "
        "net = network.to_openvino(torch.nn.Conv2d(3, 4, 3), 8); "
        "first = ov.compile_model(net); second = ov.compile_model(net); "
        "del first; del second; "
        "signal.signal(signal.SIGUSR1, lambda *_: print('handled')); os.kill(os.getpid(), signal.SIGUSR1)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "handled" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.docker
def test_the_image_exports_and_runs_the_int8_model(docker_image):
    """The image's one venv holds OpenVINO and NNCF beside the training pins, and they work there."""
    script = (
        "import numpy, torch; from imgclf.artifact import network, quantize, openvino_runtime as ov; "
        "fp32 = network.to_openvino(network.create_model('resnet18', 3).eval(), 32); "
        "int8 = quantize.quantize(fp32, [numpy.random.rand(4, 3, 32, 32).astype('float32')]); "
        "print('int8 answers', ov.compile_model(int8)(numpy.zeros((2, 3, 32, 32), 'float32'))[0].shape)"
    )
    proc = subprocess.run(["docker", "run", "--rm", docker_image, "sh", "-c", f"pip check && python -c \"{script}\""],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "No broken requirements found" in proc.stdout and "int8 answers (2, 3)" in proc.stdout


def test_training_stores_the_formats_checked_on_its_validation_channel(tmp_path, image_folders):
    from test_train import job_env

    from imgclf.train.job import run

    env = job_env(tmp_path, image_folders, epochs="1", **{"serving-formats": "true"})
    assert run(env) == 0
    card = load_card(env.model_dir)
    assert set(card.formats) == {"openvino_fp32", "openvino_int8"}
    valid_images = len(ImageFolderDataset(image_folders / "valid", card.classes))
    assert all(f.agreement.images == valid_images for f in card.formats.values())
    # calibrated on the training images (all of them: fewer than the 300 it takes at most)
    assert card.formats["openvino_int8"].calibration_images == len(ImageFolderDataset(image_folders / "train", card.classes))
