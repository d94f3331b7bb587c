import io

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.artifact.images import EvalSettings, load_rgb, reduce_on_decode, to_rgb
from imgclf.train.presets import ClassificationPresetEval, ClassificationPresetTrain


def test_eval_settings_round_trip_through_json_types():
    s = EvalSettings.for_image_size(160, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert (s.crop_size, s.resize_size) == (160, 183)
    assert EvalSettings.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in s.to_dict().items()}) == s


def test_eval_preset_output_shape_and_normalisation():
    tf = ClassificationPresetEval.from_settings(EvalSettings(crop_size=32, resize_size=40, mean=(0.5,) * 3,
                                                             std=(0.5,) * 3))
    x = tf(Image.new("RGB", (100, 60), (255, 255, 255)))
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x, torch.ones_like(x))  # (1 - 0.5) / 0.5


def test_train_preset_is_random_but_shaped():
    tf = ClassificationPresetTrain(crop_size=24)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    a, b = tf(img), tf(img)
    assert a.shape == b.shape == (3, 24, 24)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_to_rgb_converts_every_mode(mode):
    img = Image.new(mode, (8, 6))
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (8, 6)


def test_to_rgb_composites_alpha_on_white_and_stretches_16_bit():
    transparent = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    rgb = to_rgb(deep)
    assert [rgb.getpixel((x, 0))[0] for x in range(2)] == [0, 255]


def test_reduce_on_decode_decodes_large_jpeg_smaller():
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1600), (10, 20, 30)).save(buf, "JPEG")
    img = Image.open(io.BytesIO(buf.getvalue()))
    reduce_on_decode(img, 256)
    img.load()
    assert min(img.size) >= 256 and img.size[0] <= 1000
    half = io.BytesIO()
    Image.new("RGB", (512, 640), (10, 20, 30)).save(half, "JPEG")
    img = Image.open(half)
    reduce_on_decode(img, 256)  # exactly half: decoded whole (the resize's filter keeps the answers)
    img.load()
    assert img.size == (512, 640)
    png = Image.open(io.BytesIO(_png()))
    reduce_on_decode(png, 8)  # not a JPEG: left alone
    assert png.size == (64, 64)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG")
    return buf.getvalue()


def test_load_rgb_turns_photos_upright_by_exif_for_training_and_serving():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("L", (80, 40)).save(buf, "JPEG", exif=exif)
    img = load_rgb(Image.open(io.BytesIO(buf.getvalue())), 0)
    assert (img.size, img.mode) == ((40, 80), "RGB")
    plain = load_rgb(Image.open(io.BytesIO(_jpeg((300, 200)))), 0)  # no reduction asked for
    assert plain.size == (300, 200)


def _jpeg(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment"])
def test_train_preset_adds_the_augmentation_policy_and_random_erasing(policy):
    tf = ClassificationPresetTrain(crop_size=24, auto_augment=policy, random_erase=1.0)
    names = [type(op).__name__ for op in tf.transforms.transforms]
    assert names[2] == {"trivialaugment": "TrivialAugmentWide", "randaugment": "RandAugment"}[policy]
    assert names[-1] == "RandomErasing"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    x = tf(img)
    assert x.shape == (3, 24, 24) and (x == 0).any()  # a rectangle erased to the normalised mean


def test_train_preset_without_ingredients_is_crop_and_flip_only():
    names = [type(op).__name__ for op in ClassificationPresetTrain(crop_size=24).transforms.transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"] and "RandomErasing" not in names
    with pytest.raises(ValueError, match="unknown auto-augment 'autoaugment'"):
        ClassificationPresetTrain(crop_size=24, auto_augment="autoaugment")


def test_crop_scale_bounds_how_far_random_crops_zoom_in():
    img = Image.new("L", (64, 64))
    img.paste(255, (0, 0, 16, 16))  # a white corner, 1/16 of the image

    def white_corners(crop_scale):
        tf = ClassificationPresetTrain(crop_size=32, hflip_prob=0, crop_scale=crop_scale, mean=(0,), std=(1,))
        return [bool(tf(img)[0, :4, :4].min() > 0.5) for _ in range(30)]
    torch.manual_seed(0)
    assert all(white_corners(1.0))  # the whole (square) image every time
    assert not all(white_corners(0.08))


def test_eval_crop_ratio_sets_the_resize():
    assert EvalSettings.for_image_size(224).resize_size == 256  # classic 0.875
    assert EvalSettings.for_image_size(224, crop_ratio=224 / 232).resize_size == 232
