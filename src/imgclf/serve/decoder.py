"""Request bodies to RGB images, one function per content type (`DECODERS`).

    image/jpeg, image/png, application/x-image   one encoded image (any format PIL reads)
    application/json    a base64 string, a list of them, {"image": ..} / {"images": [..]}
                        optionally with "top_k", or {"instances": [..]} (SageMaker's JSON
                        serializers); an item may also be {"b64": ..}
    application/x-npy   uint8 pixels, (H, W), (H, W, C) or (N, H, W, C) with C in 1, 3, 4;
                        header checked against the data before anything is allocated, no pickle

A body without a usable content type (none, application/octet-stream, or curl's default
application/x-www-form-urlencoded) is typed by its first bytes (`sniff`).

JPEGs are decoded at reduced size when the transform would throw the detail away, EXIF
orientation is applied, and every mode becomes 8-bit RGB. Limits against bodies that are small
on the wire and huge in memory: an image with more pixels than `PIL.Image.MAX_IMAGE_PIXELS` is
refused before decoding (decompression bombs), the images of one request share that pixel
budget, and a request carries at most `MAX_IMAGES` images.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..artifact.images import load_rgb, to_rgb
from .errors import BadRequest, PayloadTooLarge, UnsupportedContentType
from .sniffing import UNTYPED, sniff

NPY_CHANNELS = (1, 3, 4)
MAX_IMAGES = 64  # per request: each becomes a 3 x crop x crop float tensor in the worker



@dataclass
class Decoded:
    images: list[Image.Image] = field(default_factory=list)
    top_k: int | None = None  # asked for in the body (JSON only)


def decode_image(body: bytes, min_side: int) -> Decoded:
    return Decoded([open_image(body, min_side)])


def open_image(data: bytes, min_side: int, max_pixels: int | None = None) -> Image.Image:
    """One encoded image as RGB; `max_pixels` (default `Image.MAX_IMAGE_PIXELS`) is checked on the
    header, before anything is decoded."""
    if not data:
        raise BadRequest("empty image")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    bomb = PayloadTooLarge(f"image has more than {limit} pixels (decompression bomb guard"
                           f"{'' if limit == Image.MAX_IMAGE_PIXELS else ', shared by the images of a request'})")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only; over twice the limit raises
        if img.width * img.height > limit:  # PIL only warns up to twice the limit
            raise bomb
        return load_rgb(img, min_side)
    except Image.DecompressionBombError:
        raise bomb from None
    except UnidentifiedImageError:
        raise BadRequest("body is not an image in a format the decoder knows") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadRequest(f"corrupt or truncated image: {e}") from None
    except (ArithmeticError, LookupError, TypeError, struct.error, MemoryError) as e:
        # what Pillow's format plugins have raised on other malformed headers: still the client's file
        raise BadRequest(f"corrupt image: {type(e).__name__}: {e}") from None


def decode_json(body: bytes, min_side: int) -> Decoded:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"bad JSON: {e}") from None
    except RecursionError:
        raise BadRequest("bad JSON: nested too deeply") from None
    top_k = None
    if isinstance(doc, dict):
        top_k = doc.get("top_k")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise BadRequest(f"top_k must be a positive integer, got {top_k!r}")
        key = next((k for k in ("images", "instances", "image") if k in doc), None)
        if key is None:
            raise BadRequest('JSON object needs "image" (base64 string), "images" or "instances" (list of them)')
        doc = doc[key]
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise BadRequest("no images in the request")
    check_count(len(items))
    images, budget = [], Image.MAX_IMAGE_PIXELS
    for i, item in enumerate(items):
        try:
            images.append(open_image(base64_item(item), min_side, budget))
        except (BadRequest, PayloadTooLarge) as e:
            raise type(e)(f"image {i}: {e.message}") from None
        budget -= images[-1].width * images[-1].height
    return Decoded(images, top_k)


def base64_item(item) -> bytes:
    """The bytes of one JSON image: a base64 string, a data URL, or {"b64": ...} (TensorFlow
    Serving's and SageMaker's binary form)."""
    if isinstance(item, dict) and isinstance(item.get("b64"), str):
        item = item["b64"]
    if not isinstance(item, str):
        raise BadRequest(f"expected a base64 string, got {type(item).__name__}")
    if item.startswith("data:"):  # data URL: data:image/jpeg;base64,....
        item = item.partition(",")[2]
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("not valid base64") from None


def check_count(n: int) -> None:
    if n > MAX_IMAGES:
        raise PayloadTooLarge(f"{n} images in one request; the limit is {MAX_IMAGES}")


def decode_npy(body: bytes, min_side: int) -> Decoded:
    """The array's header is read and checked first, so a header that claims a huge shape costs
    nothing; the pixels are then a view of the body (np.load would allocate the claimed size)."""
    buf = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = NPY_HEADER_READERS.get(version)
        if read_header is None:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
        shape, fortran_order, dtype = read_header(buf)
    except Exception as e:  # numpy parses the header with tokenize and ast: TokenError, MemoryError, ...
        raise BadRequest(f"not a .npy array: {type(e).__name__}: {e}") from None
    if dtype.hasobject:
        raise BadRequest("pickled objects are refused: send uint8 pixels")
    if dtype != np.uint8:
        raise BadRequest(f"expected uint8 pixels, got dtype {dtype}")
    dims = {2: (1, *shape, 1), 3: (1, *shape), 4: shape}.get(len(shape))
    if dims is None or dims[-1] not in NPY_CHANNELS or 0 in dims:
        raise BadRequest(f"expected shape (H, W), (H, W, C) or (N, H, W, C) with C in {NPY_CHANNELS}, got {shape}")
    count, height, width = dims[:3]
    if height * width > Image.MAX_IMAGE_PIXELS:
        raise PayloadTooLarge(f"images of {height}x{width} pixels are over the limit of {Image.MAX_IMAGE_PIXELS}")
    check_count(count)
    data = memoryview(body)[buf.tell():]
    if len(data) != math.prod(shape):
        raise BadRequest(f"the header says {shape} ({math.prod(shape)} bytes of pixels), the body has {len(data)}")
    array = np.frombuffer(data, np.uint8).reshape(shape, order="F" if fortran_order else "C").reshape(dims)
    if dims[-1] == 1:
        array = array[..., 0]
    return Decoded([to_rgb(Image.fromarray(np.ascontiguousarray(a))) for a in array])


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


DECODERS = {
    "image/jpeg": decode_image,
    "image/png": decode_image,
    "application/x-image": decode_image,
    "application/json": decode_json,
    "application/x-npy": decode_npy,
}


def content_type_of(body: bytes, content_type: str | None) -> str:
    """The decoder's MIME type for a request: its own, or sniffed from the body when it has none
    that says anything. Raises `UnsupportedContentType` when neither names a decoder."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime in UNTYPED:
        mime = sniff(body) or mime
    if mime not in DECODERS:
        given = f"content type {content_type!r}" if content_type else "no content type"
        raise UnsupportedContentType(
            f"{given} and a body that is not a known image, JSON or .npy; use one of {', '.join(DECODERS)}"
            if content_type is None or mime in UNTYPED else
            f"{given} is not supported; use one of {', '.join(DECODERS)}")
    return mime


def decode(body: bytes, content_type: str | None, min_side: int) -> Decoded:
    """The images (and options) in a request body; client faults raise a `ServeError`."""
    decoder = DECODERS[content_type_of(body, content_type)]
    if not body:
        raise BadRequest("empty request body")
    return decoder(bytes(body), min_side)
