"""Decoding and the evaluation transform without torch: what serving needs of an image.

`EvalSettings` (stored in the artifact) says how an image becomes the network's input at
evaluation and serving time. `EvalTransform` applies it with Pillow and numpy, step for step as
torchvision's `Resize` -> `CenterCrop` -> `PILToTensor` -> `ConvertImageDtype` -> `Normalize` do on a
PIL image (train/presets.py's ClassificationPresetEval), so the CPU image, which has no torch, gives the
network the same pixels as training's evaluation did.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Evaluation centre crop as a fraction of the resized short side: torchvision's classic 224/256
CLASSIC_CROP_RATIO = 0.875
PROBE_IMAGES = 4  # smooth synthetic images that a copy of the network is compared on without labels


@dataclass(frozen=True)
class EvalSettings:
    """What an image goes through before the network at evaluation and serving time."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def for_image_size(cls, image_size: int, *, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       crop_ratio: float = CLASSIC_CROP_RATIO) -> EvalSettings:
        # torchvision's recipes: resize the short side to crop/ratio, then centre-crop
        return cls(crop_size=image_size, resize_size=round(image_size / crop_ratio), mean=tuple(mean), std=tuple(std))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvalSettings:
        return cls(
            crop_size=int(d["crop_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation", "bilinear")),
        )


def reduce_on_decode(img: Image.Image, min_side: int) -> Image.Image:
    """Let the JPEG decoder skip detail the transform would throw away (DCT scaling).

    `draft` picks the largest power-of-two reduction that keeps both sides >= the requested size,
    so a 4000x3000 photo is decoded at 1000x750 when we need 256 pixels. Only below half: decoding
    at exactly the resized size (a 512x512 photo at 256x256, no resize) halves the time but changed
    the top-1 of 6 % of photos (docs/benchmarks.md#decode-agreement).
    """
    if img.format == "JPEG" and min_side > 0:
        w, h = img.size
        scale = min_side / min(w, h)
        if scale < 0.5:
            img.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))
    return img


def load_rgb(img: Image.Image, min_side: int) -> Image.Image:
    """Decode an opened image as training and serving both need it: at reduced size where the
    codec allows, upright by its EXIF orientation, in 8-bit RGB."""
    reduce_on_decode(img, min_side)
    img.load()
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):  # unreadable EXIF: keep the stored orientation
        pass
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) to 8-bit RGB; alpha composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grayscale: scale the value range to 8 bits instead of clipping it
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype("uint8"), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


INTERPOLATIONS = {"nearest": Image.NEAREST, "nearest-exact": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                  "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side` and the long one scaled and truncated,
    as torchvision's Resize(int) computes it."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def crop_start(size: int, crop: int) -> int:
    """The first pixel of a centred crop, as torchvision's CenterCrop places it; negative when the
    crop is larger than the image (torchvision pads with zeros, as PIL's crop does outside it)."""
    if crop > size:
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))


class EvalTransform:
    """An RGB image -> float32 (3, crop, crop) array, normalised: the evaluation transform of
    `settings` with Pillow and numpy."""

    def __init__(self, settings: EvalSettings):
        if settings.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {settings.interpolation!r}; known: {', '.join(INTERPOLATIONS)}")
        self.settings = settings
        self.resample = INTERPOLATIONS[settings.interpolation]
        mean = np.asarray(settings.mean, np.float32)[:, None]
        std = np.asarray(settings.std, np.float32)[:, None]
        # each channel's 256 normalised values, computed as ToTensor + Normalize compute them: a
        # lookup gives the same floats as the arithmetic in one pass over the pixels
        self.table = (np.arange(256, dtype=np.float32)[None] / np.float32(255) - mean) / std
        self.decode_min_side = settings.resize_size

    def __call__(self, img: Image.Image) -> np.ndarray:
        size = resized_size(*img.size, self.settings.resize_size)
        if size != img.size:
            img = img.resize(size, self.resample)
        crop = self.settings.crop_size
        left, top = crop_start(img.width, crop), crop_start(img.height, crop)
        if (left, top, img.size) != (0, 0, (crop, crop)):
            img = img.crop((left, top, left + crop, top + crop))
        pixels = np.empty((3, crop, crop), np.float32)
        for channel, band in enumerate(img.split()):
            np.take(self.table[channel], np.asarray(band), out=pixels[channel])
        return pixels


def probe_batch(n: int, transform: EvalTransform) -> np.ndarray:
    """Deterministic smooth colour images through the real transform: inputs in the range the
    network sees, unlike uniform noise."""
    rng = np.random.default_rng(0)
    size = transform.settings.crop_size
    images = [Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
              for _ in range(n)]
    return np.stack([transform(img) for img in images])
