"""Request bodies to RGB images, one function per content type (`DECODERS`).

    image/jpeg, image/png, application/x-image   one encoded image (any format PIL reads)
    application/json    a base64 string, a list of them, or {"image": ..} / {"images": [..]},
                        optionally with "top_k"
    application/x-npy   uint8 pixels, (H, W), (H, W, C) or (N, H, W, C) with C in 1, 3, 4;
                        loaded without pickle

JPEGs are decoded at reduced size when the transform would throw the detail away, EXIF
orientation is applied, and every mode becomes 8-bit RGB. Images with more pixels than
`PIL.Image.MAX_IMAGE_PIXELS` are refused before decoding (decompression bombs).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..presets import load_rgb, to_rgb
from .errors import BadRequest, PayloadTooLarge, UnsupportedContentType

NPY_CHANNELS = (1, 3, 4)


@dataclass
class Decoded:
    images: list[Image.Image] = field(default_factory=list)
    top_k: int | None = None  # asked for in the body (JSON only)


def decode_image(body: bytes, min_side: int) -> Decoded:
    return Decoded([open_image(body, min_side)])


def open_image(data: bytes, min_side: int) -> Image.Image:
    if not data:
        raise BadRequest("empty image")
    bomb = PayloadTooLarge(f"image has more than {Image.MAX_IMAGE_PIXELS} pixels (decompression bomb guard)")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only; over twice the limit raises
        if img.width * img.height > Image.MAX_IMAGE_PIXELS:  # PIL only warns up to twice the limit
            raise bomb
        return load_rgb(img, min_side)
    except Image.DecompressionBombError:
        raise bomb from None
    except UnidentifiedImageError:
        raise BadRequest("body is not an image in a format the decoder knows") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadRequest(f"corrupt or truncated image: {e}") from None


def decode_json(body: bytes, min_side: int) -> Decoded:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"bad JSON: {e}") from None
    top_k = None
    if isinstance(doc, dict):
        top_k = doc.get("top_k")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise BadRequest(f"top_k must be a positive integer, got {top_k!r}")
        if "images" in doc:
            doc = doc["images"]
        elif "image" in doc:
            doc = doc["image"]
        else:
            raise BadRequest('JSON object needs "image" (base64 string) or "images" (list of them)')
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise BadRequest("no images in the request")
    images = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise BadRequest(f"image {i}: expected a base64 string, got {type(item).__name__}")
        if item.startswith("data:"):  # data URL: data:image/jpeg;base64,....
            item = item.partition(",")[2]
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"image {i}: not valid base64") from None
        try:
            images.append(open_image(data, min_side))
        except BadRequest as e:
            raise type(e)(f"image {i}: {e.message}") from None
    return Decoded(images, top_k)


def decode_npy(body: bytes, min_side: int) -> Decoded:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadRequest(f"not a .npy array (pickled objects are refused): {e}") from None
    if not isinstance(array, np.ndarray):
        raise BadRequest("expected one .npy array, not an .npz archive")
    if array.dtype != np.uint8:
        raise BadRequest(f"expected uint8 pixels, got dtype {array.dtype}")
    shape = array.shape
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in NPY_CHANNELS or 0 in array.shape:
        raise BadRequest(f"expected shape (H, W), (H, W, C) or (N, H, W, C) with C in {NPY_CHANNELS}, got {shape}")
    height, width = array.shape[1:3]
    if height * width > Image.MAX_IMAGE_PIXELS:
        raise PayloadTooLarge(f"images of {height}x{width} pixels are over the limit of {Image.MAX_IMAGE_PIXELS}")
    if array.shape[-1] == 1:
        array = array[..., 0]
    return Decoded([to_rgb(Image.fromarray(np.ascontiguousarray(a))) for a in array])


DECODERS = {
    "image/jpeg": decode_image,
    "image/png": decode_image,
    "application/x-image": decode_image,
    "application/json": decode_json,
    "application/x-npy": decode_npy,
}


def decode(body: bytes, content_type: str | None, min_side: int) -> Decoded:
    """The images (and options) in a request body; client faults raise a `ServeError`."""
    mime = (content_type or "").split(";")[0].strip().lower()
    try:
        decoder = DECODERS[mime]
    except KeyError:
        raise UnsupportedContentType(
            f"content type {content_type!r} is not supported; use one of {', '.join(DECODERS)}"
        ) from None
    if not body:
        raise BadRequest("empty request body")
    return decoder(bytes(body), min_side)
