#!/usr/bin/env python3
"""Does the image serve a fine-tuned network's own answers?

Trains a network with the `finetune` recipe inside the image (`docker run IMAGE train` on a copy
of local_test's job, Fashion-MNIST photos of 4 kinds of clothing), serves the artifact with the
image at IMGCLF_PRECISION=auto, and compares the served top-1 on 20 real photos (the sample's
test photos) with the artifact's own: its float32 torch network behind torchvision's evaluation
transform as model.json records it. Prints what model.json recorded for the OpenVINO copies,
which precision `auto` served, and the agreement (target: 20 of 20).

    .venv/bin/python bench/serve_finetuned.py --image imgclf:latest                  # resnet50, 224 px, 1 epoch
    .venv/bin/python bench/serve_finetuned.py --image imgclf:latest --arch efficientnet_lite0 --pretrained true

Without ImageNet weights for the arch in the image, pass --pretrained false (random initialisation).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from imgclf.artifact.network import load_artifact
from imgclf.train.presets import ClassificationPresetEval
from imgclf.artifact.images import load_rgb
from serving_container import ServingContainer

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "local_test" / "test_dir"
SAMPLE = JOB / "input" / "data"
PHOTOS = sorted((SAMPLE / "test").glob("*/*.jpg"))[:20]


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, **kwargs)


def train_in_image(image: str, job: Path, hyperparameters: dict[str, str]) -> float:
    shutil.copytree(JOB / "input", job / "input")
    (job / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    start = time.perf_counter()
    proc = docker("run", "--rm", "-v", f"{job}:/opt/ml", image, "train", capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def served_top1(image: str, model_dir: Path) -> tuple[list[str], str]:
    """The served labels of PHOTOS, and the server's log line that names the precision it chose."""
    with ServingContainer(image, model_dir, ["IMGCLF_PRECISION=auto"]) as box:
        box.wait()
        return box.top1([path.read_bytes() for path in PHOTOS]), box.log_line("precision auto")


def own_top1(model_dir: Path) -> list[str]:
    """The labels of PHOTOS by the artifact's float32 torch network behind its evaluation transform."""
    model, card = load_artifact(model_dir)
    transform = ClassificationPresetEval.from_settings(card.eval)
    pixels = []
    for path in PHOTOS:
        with Image.open(path) as img:
            pixels.append(transform(load_rgb(img, transform.decode_min_side)))
    with torch.inference_mode():
        return [card.classes[i] for i in model.eval()(torch.stack(pixels)).argmax(1).tolist()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="imgclf:latest")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--pretrained", default="false", choices=("true", "false"))
    p.add_argument("--image-size", default="224")
    p.add_argument("--epochs", default="1")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp)
        seconds = train_in_image(a.image, job, {"arch": a.arch, "pretrained": a.pretrained, "recipe": "finetune",
                                                "epochs": a.epochs, "image-size": a.image_size, "batch-size": "16"})
        model_dir = job / "model"
        card = json.loads((model_dir / "model.json").read_text())
        print(f"# {a.arch} (pretrained {a.pretrained}) fine-tuned {a.epochs} epoch(s) at {a.image_size} px in the "
              f"image: {seconds:.0f} s; eval transform {card['eval']}")
        print(f"# formats in model.json: {json.dumps(card['formats'])}")
        served, chosen = served_top1(a.image, model_dir)
        own = own_top1(model_dir)
        print(f"# served with IMGCLF_PRECISION=auto: {chosen}")
        agree = sum(s == o for s, o in zip(served, own))
        truth = [p.parent.name for p in PHOTOS]
        print(f"# own top-1 right on {sum(o == t for o, t in zip(own, truth))} of {len(PHOTOS)}, "
              f"{len(set(own))} distinct answers")
        print(f"serve-finetuned: arch={a.arch} photos={len(PHOTOS)} served_equals_own={agree}")
        # the job wrote as root inside the container: clear it from inside one
        docker("run", "--rm", "-v", f"{job}:/opt/ml", a.image, "rm", "-rf", "/opt/ml/model", "/opt/ml/output",
               "/opt/ml/checkpoints", capture_output=True)


if __name__ == "__main__":
    main()
