#!/usr/bin/env python3
"""Does the arm64 CPU image answer as the x86 one? (Under qemu emulation here: correctness only.)

Makes an artifact of efficientnet_lite0 with its ImageNet weights (the `lite` extra): the float32
OpenVINO copy, an int8 copy calibrated on the 20 ImageNet photos of foolbox 3.3.4's data/ folder,
those photos stored as its calibration images, and its top-1 agreement recorded as measured with
this x86 CPU's int8 kernels only. Serves it with each image at IMGCLF_PRECISION=auto and fp32, and
the x86 image also with oneDNN capped to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, the int8 arithmetic of an
AVX2-only host, which the artifact did not record), and prints, per run: the seconds from
`docker run` to the first 200 on /ping, the start-up precision decision as logged (the capped and
the arm64 runs measure int8 again with their own kernels), and the top-1 on the 20 photos, with
how many equal the x86 image's and how many match the photos' labels.
Emulated seconds say nothing of a Graviton's speed.

    .venv/bin/python bench/serve_arm64.py --x86 imgclf:test-cpu --arm64 imgclf:test-cpu-arm64 [--photos DIR]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.artifact import export, quantize
from imgclf.artifact.card import Agreement, ModelCard, ServingFormat, write_card
from imgclf.artifact.images import EvalTransform, load_rgb
from imgclf.artifact.int8_kernels import CAP_ENV, int8_kernels
from imgclf.artifact.network import save_artifact
from imgclf.names import CALIBRATION_DIR

sys.path.insert(0, str(Path(__file__).parent))
from serve_precision_agreement import foolbox_photos, imagenet_lite0  # noqa: E402  (the 20 ImageNet photos)
from serving_container import ServingContainer  # noqa: E402

START_TIMEOUT_S = 900


def imagenet_artifact(model_dir: Path, photos: list[Path], labels: list[int]) -> None:
    model, card, _ = imagenet_lite0()
    save_artifact(model_dir, model, card)
    transform = EvalTransform(card.eval)
    pixels = []
    for path in photos:
        with Image.open(path) as img:
            pixels.append(transform(load_rgb(img, transform.decode_min_side)))
    pixels = np.stack(pixels)
    fp32 = export.to_openvino(model.eval(), 224)
    int8 = quantize.quantize(fp32, [pixels[i:i + 4] for i in range(0, len(pixels), 4)])
    export.save_model(fp32, model_dir / "model.xml")
    export.save_model(int8, model_dir / "model_int8.xml")
    (model_dir / CALIBRATION_DIR).mkdir()
    for i, path in enumerate(photos):
        shutil.copy(path, model_dir / CALIBRATION_DIR / f"{i:03d}.jpg")
    top1 = {name: export.compile_model(ir)(pixels)[0].argmax(1) for name, ir in (("fp32", fp32), ("int8", int8))}
    accuracy = {name: float(np.mean(t == np.array(labels))) for name, t in top1.items()}
    agreement = Agreement(len(photos), float(np.mean(top1["fp32"] == top1["int8"])), accuracy["int8"], accuracy["fp32"])
    write_card(model_dir, ModelCard(card.arch, card.classes, card.eval, formats={
        export.FP32_FORMAT: ServingFormat("model.xml", "fp32", Agreement(len(photos), 1.0, accuracy["fp32"],
                                                                         accuracy["fp32"])),
        export.INT8_FORMAT: ServingFormat("model_int8.xml", "int8", agreement, len(photos),
                                          {int8_kernels(): agreement})}))
    print(f"artifact: int8 with this CPU's {int8_kernels()} kernels: {agreement}")


def serve(image: str, model_dir: Path, photos: list[Path], precision: str, *env: str) -> tuple[float, str, list[str]]:
    """(seconds to /ping, the logged precision decision, top-1 labels)."""
    with ServingContainer(image, model_dir, [f"IMGCLF_PRECISION={precision}", *env]) as box:
        seconds = box.wait(START_TIMEOUT_S)
        return seconds, box.log_line(f"precision {precision}"), box.top1([p.read_bytes() for p in photos])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--x86", default="imgclf:test-cpu", help="the x86 CPU image")
    p.add_argument("--arm64", default="imgclf:test-cpu-arm64", help="the arm64 CPU image")
    p.add_argument("--photos", help="folder of imagenet_<i>_<label>.jpg files (default: foolbox 3.3.4's)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        photos = sorted((Path(args.photos) if args.photos else foolbox_photos(work)).glob("imagenet_*.jpg"))
        labels = [int(p.stem.split("_")[2]) for p in photos]
        model_dir = work / "model"
        imagenet_artifact(model_dir, photos, labels)
        model_dir.chmod(0o755)
        for precision in ("auto", "fp32"):
            runs = {args.x86: serve(args.x86, model_dir, photos, precision)}
            if precision == "auto":
                runs[f"{args.x86} capped to AVX2"] = serve(args.x86, model_dir, photos, precision, f"{CAP_ENV}=AVX2")
            runs[args.arm64] = serve(args.arm64, model_dir, photos, precision)
            x86_top1 = runs[args.x86][2]
            for image, (seconds, decision, top1) in runs.items():
                right = sum(int(t) == label for t, label in zip(top1, labels))
                same = sum(a == b for a, b in zip(top1, x86_top1))
                print(f"{precision}: {image}: /ping after {seconds:.0f} s; top-1 right {right}/{len(photos)}, "
                      f"equal to the x86 image's {same}/{len(photos)}\n  {decision}", flush=True)


if __name__ == "__main__":
    main()
