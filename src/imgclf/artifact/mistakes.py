"""Thumbnails of the held-out images the model got wrong, for the report's most confused pairs.

mistakes.json lies beside evaluation.json (model artifact and the job's output data): the pairs
of evaluation.json's `most_confused`, each with up to PER_PAIR of its images, the most confident
mistakes first, as small JPEGs the report shows inline (data: URIs):

    {"format_version": 1, "pairs": [{"true", "predicted",
                                     "images": [{"source", "confidence", "jpeg"}, ...]}, ...]}

`source` names the image in its data set (class folder and file, or shard and key), `confidence`
is the probability the model gave the wrong class, `jpeg` the thumbnail, base64. Torch-free (PIL).
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

MISTAKES_FILE = "mistakes.json"
FORMAT_VERSION = 1
PER_PAIR = 4  # thumbnails per confused pair
THUMBNAIL_PX = 96  # longest side
JPEG_QUALITY = 70
MAX_JPEG_BYTES = 64_000  # all thumbnails together: the file and the report stay small


def thumbnail(img: Image.Image) -> bytes:
    """A JPEG of at most THUMBNAIL_PX a side."""
    small = img.copy()
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    small.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def thumbnail_of(path: Path) -> bytes:
    with Image.open(path) as img:
        img.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at reduced size
        return thumbnail(img)


def entry(source: str, confidence: float, jpeg: bytes) -> dict:
    return {"source": source, "confidence": round(float(confidence), 4), "jpeg": base64.b64encode(jpeg).decode()}


def write(folder: Path, pairs: list[dict]) -> Path:
    path = Path(folder) / MISTAKES_FILE
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, "pairs": pairs}) + "\n")
    return path


def read(folder: Path) -> list[dict] | None:
    """The pairs of a model or output folder's mistakes.json; None when it has none."""
    path = Path(folder) / MISTAKES_FILE
    return json.loads(path.read_text())["pairs"] if path.is_file() else None
