import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from serve_support import encode, jpeg

from imgclf.serve.decoder import DECODERS, content_type_of, decode
from imgclf.serve.sniffing import sniff
from imgclf.serve.errors import BadRequest, PayloadTooLarge, UnsupportedContentType


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def npy_header(shape, dtype="|u1") -> bytes:
    """A .npy header that claims `shape`, followed by a few bytes: what np.load would allocate for."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/x-image", "image/jpeg; charset=binary"])
def test_one_image_any_image_type(content_type):
    (img,) = decode(encode(Image.new("RGB", (40, 30), (10, 200, 30)), "PNG"), content_type, 32).images
    assert img.mode == "RGB" and img.size == (40, 30)
    assert img.getpixel((5, 5)) == (10, 200, 30)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: a landscape file shown as portrait
    (img,) = decode(encode(Image.new("RGB", (80, 40)), "JPEG", exif=exif), "image/jpeg", 40).images
    assert img.size == (40, 80)


def test_large_jpeg_is_decoded_at_reduced_size():
    (img,) = decode(jpeg(size=(2000, 1600)), "image/jpeg", 224).images
    assert img.size == (500, 400)  # DCT scaling by 4 keeps the short side >= 224


@pytest.mark.parametrize("img", [
    Image.new("L", (20, 20), 128),
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)),
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)),
    Image.new("P", (20, 20)),
    Image.fromarray(np.full((20, 20), 40000, np.uint16)),
], ids=["gray", "alpha", "cmyk", "palette", "16-bit"])
def test_every_mode_becomes_rgb(img):
    fmt = "JPEG" if img.mode in ("L", "CMYK") else "PNG"
    (out,) = decode(encode(img, fmt), "image/png", 16).images
    assert out.mode == "RGB" and out.size == (20, 20)


def test_json_forms_and_top_k():
    one = b64(jpeg())
    assert len(decode(json.dumps(one).encode(), "application/json", 16).images) == 1
    assert len(decode(json.dumps([one, one, one]).encode(), "application/json", 16).images) == 3
    d = decode(json.dumps({"images": [one, one], "top_k": 2}).encode(), "application/json", 16)
    assert len(d.images) == 2 and d.top_k == 2
    d = decode(json.dumps({"image": "data:image/jpeg;base64," + one}).encode(), "application/json", 16)
    assert len(d.images) == 1 and d.top_k is None


@pytest.mark.parametrize("shape, count", [((30, 40), 1), ((30, 40, 1), 1), ((30, 40, 3), 1), ((2, 30, 40, 4), 2)])
def test_npy_pixels(shape, count):
    images = decode(npy(np.full(shape, 200, np.uint8)), "application/x-npy", 16).images
    assert len(images) == count and all(i.mode == "RGB" and i.size == (40, 30) for i in images)


@pytest.mark.parametrize("body, content_type, error, words", [
    (jpeg(), "text/csv", UnsupportedContentType, "not supported"),
    (b"plain words", None, UnsupportedContentType, "no content type"),
    (b"plain words", "application/octet-stream", UnsupportedContentType, "not a known image"),
    (b"", "image/jpeg", BadRequest, "empty"),
    (b"this is not an image", "image/jpeg", BadRequest, "not an image"),
    (jpeg(size=(200, 200))[:400], "image/jpeg", BadRequest, "truncated"),
    (b"{not json", "application/json", BadRequest, "bad JSON"),
    (b'{"picture": "abc"}', "application/json", BadRequest, '"image"'),
    (b'["@@@not base64@@@"]', "application/json", BadRequest, "base64"),
    (b"[]", "application/json", BadRequest, "no images"),
    (b'{"image": "", "top_k": 0}', "application/json", BadRequest, "top_k"),
    (npy(np.zeros((2, 3, 4, 5, 3), np.uint8)), "application/x-npy", BadRequest, "shape"),
    (npy(np.zeros((8, 8, 2), np.uint8)), "application/x-npy", BadRequest, "shape"),
    (npy(np.zeros((8, 8, 3), np.float32)), "application/x-npy", BadRequest, "uint8"),
    (npy(np.array([{"a": 1}], dtype=object)), "application/x-npy", BadRequest, "pickle"),
    (b"\x93NUMPY garbage", "application/x-npy", BadRequest, "npy"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", BadRequest, "nested too deeply"),
    (json.dumps({"instances": [{"b64": 3}]}).encode(), "application/json", BadRequest, "image 0: expected a base64"),
    (npy(np.zeros((4, 4, 3), np.uint8))[:-5], "application/x-npy", BadRequest, "the body has 43"),
    (npy_header((10**6, 10**6, 3)), "application/x-npy", PayloadTooLarge, "over the limit"),
    (npy_header((10**5, 8, 8, 3)), "application/x-npy", PayloadTooLarge, "the limit is 64"),
    (npy(np.zeros((8, 8), np.int64)), "application/x-npy", BadRequest, "uint8"),
    (npy(np.zeros((8, 8), ">u2")), "application/x-npy", BadRequest, "uint8"),
    (npy(np.zeros((8, 8), [("r", "u1"), ("g", "u1")])), "application/x-npy", BadRequest, "uint8"),
    (json.dumps([b64(jpeg())] * 65).encode(), "application/json", PayloadTooLarge, "65 images"),
], ids=["unknown-type", "no-type", "octet-stream-garbage", "empty", "corrupt", "truncated", "bad-json", "json-no-image", "bad-base64",
        "json-empty-list", "bad-top-k", "npy-5d", "npy-2-channels", "npy-float", "npy-pickle", "npy-corrupt",
        "deep-json", "instances-not-base64", "npy-short-data", "npy-huge-header", "npy-many-images", "npy-int64",
        "npy-uint16", "npy-structured", "too-many-images"])
def test_bad_input_is_a_client_error_with_a_reason(body, content_type, error, words):
    with pytest.raises(error) as e:
        decode(body, content_type, 16)
    assert words in e.value.message and 400 <= e.value.status_code < 500


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, before our refusal
def test_decompression_bombs_are_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    small = encode(Image.new("L", (120, 120)), "PNG")  # 14,400 pixels: PIL would only warn
    huge = encode(Image.new("1", (400, 400)), "PNG")  # 160,000 pixels in a few hundred bytes
    for body in (small, huge, json.dumps([b64(huge)]).encode()):
        with pytest.raises(PayloadTooLarge, match="decompression bomb"):
            decode(body, "application/json" if body.startswith(b"[") else "image/png", 16)
    with pytest.raises(PayloadTooLarge):
        decode(npy(np.zeros((200, 200), np.uint8)), "application/x-npy", 16)


def test_sagemaker_instances_and_b64_objects():
    one = b64(jpeg())
    d = decode(json.dumps({"instances": [one, {"b64": one}]}).encode(), "application/json", 16)
    assert len(d.images) == 2
    d = decode(json.dumps({"instances": [{"b64": one}], "top_k": 1}).encode(), "application/json; charset=utf-8", 16)
    assert len(d.images) == 1 and d.top_k == 1


@pytest.mark.parametrize("body, mime", [
    (jpeg(), "image/jpeg"),
    (encode(Image.new("RGB", (8, 8)), "PNG"), "image/png"),
    (encode(Image.new("RGB", (8, 8)), "GIF"), "application/x-image"),
    (encode(Image.new("RGB", (8, 8)), "BMP"), "application/x-image"),
    (encode(Image.new("RGB", (8, 8)), "TIFF"), "application/x-image"),
    (encode(Image.new("RGB", (8, 8)), "WEBP"), "application/x-image"),
    (npy(np.zeros((8, 8), np.uint8)), "application/x-npy"),
    (b'  {"image": "abc"}', "application/json"),
])
def test_a_body_without_content_type_is_typed_by_its_first_bytes(body, mime):
    assert sniff(body) == mime
    for untyped in (None, "", "application/octet-stream", "application/x-www-form-urlencoded"):
        assert content_type_of(body, untyped) == mime
    assert content_type_of(body, "image/png") == "image/png"  # a content type that names a decoder wins


def test_decoded_images_of_one_request_share_the_pixel_budget(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    one = b64(encode(Image.new("L", (90, 90)), "PNG"))  # 8,100 pixels: alone it passes
    assert len(decode(json.dumps([one]).encode(), "application/json", 16).images) == 1
    with pytest.raises(PayloadTooLarge, match="image 1: .*shared by the images"):
        decode(json.dumps([one, one]).encode(), "application/json", 16)


def test_every_documented_content_type_has_a_decoder():
    assert set(DECODERS) == {"image/jpeg", "image/png", "application/x-image", "application/json", "application/x-npy"}
