"""What an endpoint captured: SageMaker data-capture files read back, one observation per image.

A capture file holds JSON lines, one per request (SageMaker writes them under
`<prefix>/<endpoint>/<variant>/yyyy/mm/dd/hh/*.jsonl`; any depth is read here):

    {"captureData": {"endpointInput":  {"observedContentType": "image/jpeg", "mode": "INPUT",
                                        "data": "...", "encoding": "BASE64"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "{\"predictions\": ...}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "...", "inferenceId": "...", "inferenceTime": "..."},
     "eventVersion": "0"}

`data` is the body as its `encoding` says: BASE64, JSON (the text itself) or CSV (the text). The
request is decoded as the server decodes it (an image, JSON with base64 images, or .npy), the
answer in either of the server's shapes (top-k predictions, or verbose: every class).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..artifact.baseline import image_statistics

log = logging.getLogger("imgclf.monitor")

CAPTURE_GLOB = "*.jsonl"
IMAGE_TYPES = ("image/", "application/x-image", "application/octet-stream")


@dataclass
class Observation:
    """One image the endpoint answered: its input statistics (None where the request's images
    could not be read back), the class probabilities (in the model's class order), and the
    request's inference id (which ground truth refers to) with the image's place in the request."""

    probabilities: np.ndarray
    inputs: dict | None
    inference_id: str | None
    position: int = 0


@dataclass
class Capture:
    observations: list[Observation] = field(default_factory=list)
    records: int = 0  # captured requests
    files: int = 0
    errors: int = 0  # requests answered with an error (4xx/5xx body): nothing to compare
    unreadable: int = 0  # records or inputs that could not be decoded


def body(part: dict) -> bytes:
    """The bytes of a captured request or answer, as its `encoding` says."""
    data = part.get("data", "")
    if str(part.get("encoding", "")).upper() == "BASE64":
        return base64.b64decode(data)
    return data.encode() if isinstance(data, str) else json.dumps(data).encode()


def _b64_images(doc) -> list[bytes]:
    """The base64 images of a JSON request, in each shape the server takes."""
    if isinstance(doc, dict):
        for key in ("instances", "images", "image", "b64"):
            if key in doc:
                return _b64_images(doc[key])
        return []
    if isinstance(doc, list):
        return [b for item in doc for b in _b64_images(item)]
    if isinstance(doc, str):
        return [base64.b64decode(doc.split(",", 1)[1] if doc.startswith("data:") else doc)]
    return []


def request_images(raw: bytes, content_type: str) -> list[Image.Image]:
    """The images of a request body, as they arrived (not converted)."""
    mime = content_type.split(";")[0].strip().lower()
    if mime == "application/json":
        return [Image.open(io.BytesIO(b)) for b in _b64_images(json.loads(raw))]
    if mime == "application/x-npy":
        array = np.load(io.BytesIO(raw), allow_pickle=False)
        array = array[None] if array.ndim in (2, 3) and not (array.ndim == 3 and array.shape[-1] > 4) else array
        return [Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a) for a in array]
    return [Image.open(io.BytesIO(raw))]


def answer_probabilities(answer, classes: tuple[str, ...]) -> list[np.ndarray]:
    """Per image, the probability of every class. A verbose answer has them all; a top-k answer
    has k of them, and the rest of the probability is spread evenly over the classes it leaves out."""
    index = {c: i for i, c in enumerate(classes)}
    if isinstance(answer, dict) and "predictions" in answer:
        out = []
        for top in answer["predictions"]:
            p = np.zeros(len(classes))
            for item in top:
                p[index[item["label"]]] = item["probability"]
            missing = len(classes) - len(top)
            if missing:
                p[p == 0] = max(0.0, 1.0 - p.sum()) / missing
            out.append(p)
        return out
    verbose = [answer] if isinstance(answer, dict) else answer
    out = []
    for item in verbose:
        p = np.zeros(len(classes))
        for label, prob in zip(item["labels"], item["probabilities"]):
            p[index[label]] = prob
        out.append(p)
    return out


def parse_record(line: str, classes: tuple[str, ...], capture: Capture) -> None:
    """One captured request into `capture`'s observations (or its error counts)."""
    record = json.loads(line)
    data = record["captureData"]
    meta = record.get("eventMetadata", {})
    capture.records += 1
    out = data["endpointOutput"]
    answer = json.loads(body(out))
    if isinstance(answer, dict) and "error" in answer:
        capture.errors += 1
        return
    probabilities = answer_probabilities(answer, classes)
    try:
        inp = data["endpointInput"]
        images = request_images(body(inp), inp.get("observedContentType", "application/x-image"))
        inputs = [image_statistics(img) for img in images]
        if len(inputs) != len(probabilities):
            raise ValueError(f"{len(inputs)} images and {len(probabilities)} answers")
    except (OSError, ValueError, KeyError, binascii.Error) as e:
        capture.unreadable += 1
        log.debug("captured request %s: input not read back: %s", meta.get("eventId"), e)
        inputs = [None] * len(probabilities)
    inference_id = meta.get("inferenceId") or meta.get("eventId")
    capture.observations += [Observation(p, s, inference_id, i) for i, (p, s) in enumerate(zip(probabilities,
                                                                                                inputs))]


def read_lines(source: str) -> Iterator[tuple[str, Iterable[str]]]:
    """(file name, its lines) of every capture file under a folder or an s3:// prefix, sorted by name."""
    if source.startswith("s3://"):
        import boto3

        bucket, _, prefix = source[len("s3://"):].partition("/")
        s3 = boto3.client("s3")
        keys = sorted(o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                      for o in page.get("Contents", []) if o["Key"].endswith(".jsonl"))
        for key in keys:
            text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            yield f"s3://{bucket}/{key}", text.splitlines()
        return
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"no capture folder {root}")
    for path in sorted(root.rglob(CAPTURE_GLOB)) if root.is_dir() else [root]:
        yield str(path), path.read_text().splitlines()


def read_capture(source: str, classes: tuple[str, ...]) -> Capture:
    capture = Capture()
    for name, lines in read_lines(source):
        capture.files += 1
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                parse_record(line, classes, capture)
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                capture.unreadable += 1
                log.warning("%s line %d: not a capture record of this model: %s", name, n, e)
    return capture


def read_ground_truth(source: str, classes: tuple[str, ...]) -> dict[tuple[str, int], int]:
    """Ground truth in SageMaker's merge format, one JSON line per inference:
    {"groundTruthData": {"data": "<label>", "encoding": "CSV"|"JSON"}, "eventMetadata":
    {"eventId": "<inferenceId>"}, "eventVersion": "0"}. `data` is a class name (or index), or for a
    request of several images a JSON list of them. Returns (inference id, position) -> class index."""
    index = {c: i for i, c in enumerate(classes)}
    truth = {}
    for name, lines in read_lines(source):
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                part = record["groundTruthData"]
                text = body(part).decode().strip()
                labels = json.loads(text) if text.startswith("[") else [text]
                for position, label in enumerate(labels):
                    label = str(label).strip().strip('"')
                    truth[(record["eventMetadata"]["eventId"], position)] = (
                        index[label] if label in index else int(label))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("%s line %d: not a ground-truth record of this model: %s", name, n, e)
    return truth
