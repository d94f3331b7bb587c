"""Image transforms for training and evaluation, in one place.

Evaluation settings (`EvalSettings`) are stored in the model artifact, and serving builds its
transform from them through `ClassificationPresetEval`, so training and serving never disagree
about sizes, interpolation or normalisation.
"""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

# torch-free: decoding and the evaluation settings live in images.py (the CPU image serves without torch)
from .images import IMAGENET_MEAN, IMAGENET_STD, EvalSettings, load_rgb, reduce_on_decode, to_rgb  # noqa: F401


class ClassificationPresetTrain:
    def __init__(
        self,
        *,
        crop_size: int,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation: str = "bilinear",
        hflip_prob: float = 0.5,
    ):
        ops = [T.RandomResizedCrop(crop_size, interpolation=InterpolationMode(interpolation), antialias=True)]
        if hflip_prob > 0:
            ops.append(T.RandomHorizontalFlip(hflip_prob))
        ops += [T.PILToTensor(), T.ConvertImageDtype(torch.float), T.Normalize(mean=mean, std=std)]
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
