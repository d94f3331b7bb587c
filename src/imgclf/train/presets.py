"""Image transforms for training and evaluation with torchvision, in one place.

Evaluation settings (`EvalSettings`) are stored in the model artifact. Training evaluates through
`ClassificationPresetEval`; serving applies the same settings with Pillow and numpy
(artifact/images.py's `EvalTransform`, checked against this preset in the tests), so training and
serving never disagree about sizes, interpolation or normalisation.
"""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..artifact.images import IMAGENET_MEAN, IMAGENET_STD, EvalSettings
from .recipe import AUTO_AUGMENTS


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
        crop_scale: float = 0.08,
        auto_augment: str = "none",
        random_erase: float = 0.0,
    ):
        mode = InterpolationMode(interpolation)
        ops = [T.RandomResizedCrop(crop_size, scale=(crop_scale, 1.0), interpolation=mode, antialias=True)]
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
