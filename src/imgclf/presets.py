"""Image transforms for training and evaluation, in one place.

Evaluation settings (`EvalSettings`) are stored in the model artifact, and serving builds its
transform from them through `ClassificationPresetEval`, so training and serving never disagree
about sizes, interpolation or normalisation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .recipe import AUTO_AUGMENTS, CLASSIC_CROP_RATIO

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    so a 4000x3000 photo is decoded at 1000x750 when we need 256 pixels.
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
        import numpy as np

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


def auto_augment_op(name: str, interpolation: InterpolationMode):
    """The automatic augmentation policy called `name` (one of AUTO_AUGMENTS), None for "none"."""
    if name not in AUTO_AUGMENTS:
        raise ValueError(f"unknown auto-augment {name!r}; choose one of {', '.join(AUTO_AUGMENTS)}")
    if name == "trivialaugment":
        return T.TrivialAugmentWide(interpolation=interpolation)
    if name == "randaugment":
        return T.RandAugment(interpolation=interpolation)
    return None


class ClassificationPresetTrain:
    """Random resized crop and flip; optionally an automatic augmentation policy on the PIL image
    and random erasing of a rectangle of the normalised tensor (torchvision's 2021 recipe)."""

    def __init__(
        self,
        *,
        crop_size: int,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation: str = "bilinear",
        hflip_prob: float = 0.5,
        auto_augment: str = "none",
        random_erase: float = 0.0,
    ):
        mode = InterpolationMode(interpolation)
        ops = [T.RandomResizedCrop(crop_size, interpolation=mode, antialias=True)]
        if hflip_prob > 0:
            ops.append(T.RandomHorizontalFlip(hflip_prob))
        policy = auto_augment_op(auto_augment, mode)
        if policy is not None:
            ops.append(policy)
        ops += [T.PILToTensor(), T.ConvertImageDtype(torch.float), T.Normalize(mean=mean, std=std)]
        if random_erase > 0:
            ops.append(T.RandomErasing(p=random_erase, value=0))  # 0: the mean colour after normalising
        self.transforms = T.Compose(ops)
        # random crops zoom in, so keep twice the crop's resolution when decoding at reduced size
        self.decode_min_side = 2 * crop_size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transforms(img)


class ClassificationPresetEval:
    def __init__(
        self,
        *,
        crop_size: int,
        resize_size: int,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation: str = "bilinear",
    ):
        self.transforms = T.Compose(
            [
                T.Resize(resize_size, interpolation=InterpolationMode(interpolation), antialias=True),
                T.CenterCrop(crop_size),
                T.PILToTensor(),
                T.ConvertImageDtype(torch.float),
                T.Normalize(mean=mean, std=std),
            ]
        )
        self.decode_min_side = resize_size

    @classmethod
    def from_settings(cls, settings: EvalSettings) -> ClassificationPresetEval:
        return cls(**settings.to_dict())

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transforms(img)
