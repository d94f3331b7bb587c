#!/usr/bin/env python3
"""Does the serving decode give the full-resolution decode's answers?

The server decodes a JPEG at reduced size where the transform would throw the detail away (Pillow's
`draft`: DCT scaling, artifact/images.py), below half the size: a 600x800 or 1024x768 photo is
decoded at half size, then resized; a 512x512 one whole. The reference decodes every pixel and
resizes with Pillow, as torchvision's evaluation transform does. Both go through the same
evaluation transform into efficientnet_lite0 with its ImageNet weights (1000 classes: near ties
are common, so a small change of pixels shows); the figure is how often the top-1 is the same.
`--at-half` measures the rule the server does not use: DCT scaling at exactly half as well (a
512x512 photo decoded at 256x256, no resize).

Photos (500 by default): Fashion-MNIST's test file upscaled to 512x512, 600x800 and 1024x768, and
the 20 ImageNet photos of foolbox 3.3.4 upscaled to 512x512; all saved as JPEG at quality 90.
Last line:
  decode-agreement: photos=<n> same_top1=<n> agreement=<fraction> reference_ms=<n> served_ms=<n>

    .venv/bin/python bench/decode_agreement.py                   # fetches foolbox with pip
    .venv/bin/python bench/decode_agreement.py --photos DIR      # foolbox's data/ folder already here
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local_test"))
from bench_limit import reference_pixels, served_pixels  # noqa: E402
from make_sample_data import DEFAULT_SOURCE, read_idx  # noqa: E402
from serve_precision_agreement import foolbox_photos, imagenet_lite0  # noqa: E402

from imgclf.artifact.images import EvalTransform  # noqa: E402

SIZES = ((512, 512), (600, 800), (1024, 768))  # decoded whole, at 1/2, at 1/2; then resized


def at_half_pixels(jpeg: bytes, transform: EvalTransform) -> np.ndarray:
    """DCT scaling at exactly half as well: the rule the server does not use."""
    img = Image.open(io.BytesIO(jpeg))
    scale = transform.decode_min_side / min(img.size)
    if scale <= 0.5:
        img.draft("RGB", (round(img.width * scale), round(img.height * scale)))
    return transform(img.convert("RGB"))


def jpeg(img: Image.Image, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photos(count: int, imagenet_dir: Path) -> list[bytes]:
    imagenet = [jpeg(Image.open(p), SIZES[0]) for p in sorted(imagenet_dir.glob("imagenet_*.jpg"))]
    fashion = read_idx(DEFAULT_SOURCE / "t10k-images-idx3-ubyte.gz")
    return imagenet + [jpeg(Image.fromarray(fashion[i]), SIZES[i % len(SIZES)]) for i in range(count - len(imagenet))]


def top1(model: torch.nn.Module, pixels: list[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(np.stack(pixels[i:i + 50]))).argmax(1).numpy()
                               for i in range(0, len(pixels), 50)])


def main(args) -> None:
    with tempfile.TemporaryDirectory() as work:
        bodies = photos(args.count, Path(args.photos) if args.photos else foolbox_photos(Path(work)))
    model, card, _ = imagenet_lite0()
    model.eval()
    transform = EvalTransform(card.eval)
    answers, times = {}, {}
    for name, pixels_of in (("reference", reference_pixels), ("served", at_half_pixels if args.at_half else served_pixels)):
        start = time.perf_counter()
        pixels = [pixels_of(body, transform) for body in bodies]
        times[name] = 1000 * (time.perf_counter() - start) / len(bodies)
        answers[name] = top1(model, pixels)
    same = answers["reference"] == answers["served"]
    groups = {"ImageNet 512x512": slice(0, 20)}
    groups.update({f"Fashion-MNIST {w}x{h}": slice(20 + i, None, len(SIZES)) for i, (w, h) in enumerate(SIZES)})
    for name, part in groups.items():
        print(f"  {name}: same top-1 on {int(same[part].sum())} of {len(same[part])}")
    print(f"decode-agreement: photos={len(bodies)} same_top1={int(same.sum())} agreement={same.mean():.4f} "
          f"reference_ms={times['reference']:.2f} served_ms={times['served']:.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", help="folder of foolbox's imagenet_<i>_<label>.jpg files (default: fetched with pip)")
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--at-half", action="store_true", help="measure DCT scaling at exactly half the size too")
    main(p.parse_args())
