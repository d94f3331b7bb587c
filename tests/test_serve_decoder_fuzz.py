"""Fuzzing the request decoders with hypothesis: whatever the bytes, a decoder returns RGB images
or raises a `ServeError` (a 4xx with a reason), never anything else that would reach the worker's
500 path or kill it."""
import base64
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_support import encode

from imgclf.serve.decoder import DECODERS, decode
from imgclf.serve.errors import ServeError

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_PIXELS = 250_000  # small, so that a mutated header that claims a big image is refused quickly


def seed_files() -> list[bytes]:
    """Valid files of every format the decoders see, to mutate."""
    rgb = Image.new("RGB", (24, 16), (200, 40, 90))
    files = [encode(rgb, fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")]
    files.append(encode(Image.new("RGBA", (12, 12)), "PNG"))
    files.append(encode(rgb, "JPEG", progressive=True))
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 8, 8, 3), np.uint8))
    files.append(buf.getvalue())
    files.append(json.dumps({"instances": [base64.b64encode(files[0]).decode()], "top_k": 2}).encode())
    return files


SEEDS = seed_files()


@st.composite
def mutated(draw) -> bytes:
    """A seed file with a few bytes overwritten, inserted or cut off."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:]
    return bytes(data)


def assert_decodes_or_refuses(body: bytes, content_type: str) -> None:
    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
    try:
        decoded = decode(body, content_type, 16)
    except ServeError as e:
        assert 400 <= e.status_code < 500 and e.message
    else:
        assert decoded.images and all(img.mode == "RGB" and img.width * img.height > 0 for img in decoded.images)
    finally:
        Image.MAX_IMAGE_PIXELS = old


@FUZZ
@given(body=st.binary(max_size=512), content_type=st.sampled_from([*DECODERS, None]))
def test_random_bytes(body, content_type):
    assert_decodes_or_refuses(body, content_type)


@FUZZ
@given(body=mutated(), content_type=st.sampled_from([*DECODERS, None]))
def test_mutated_files(body, content_type):
    assert_decodes_or_refuses(body, content_type)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from([base64.b64encode(s).decode() for s in SEEDS[:3]]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["image", "images", "instances", "top_k", "b64", "x"]), children, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(doc=JSON_VALUES)
def test_json_documents(doc):
    assert_decodes_or_refuses(json.dumps(doc).encode(), "application/json")


@FUZZ
@given(shape=st.lists(st.integers(0, 70), max_size=5), dtype=st.sampled_from(["|u1", "<u2", "<f4", "|b1", "<i8"]),
       extra=st.integers(-3, 3))
def test_npy_headers(shape, dtype, extra):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    assert_decodes_or_refuses(header.getvalue() + b"\x7f" * max(0, size + extra), "application/x-npy")


@FUZZ
@given(header=st.binary(max_size=64), version=st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x00\x07"]))
def test_npy_header_bytes(header, version):
    length = len(header).to_bytes(2 if version != b"\x02\x00" else 4, "little")
    assert_decodes_or_refuses(b"\x93NUMPY" + version + length + header + b"\x01" * 16, "application/x-npy")


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_each_seed_decodes(seed):
    """The mutations start from files that decode, so a refusal above comes from the mutation."""
    mime = {0: "image/jpeg", 8: "application/x-npy", 9: "application/json"}.get(seed, "application/x-image")
    assert decode(SEEDS[seed], mime, 16).images
