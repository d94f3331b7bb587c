#!/usr/bin/env python3
"""Write SageMaker data-capture files of a model's answers to Fashion-MNIST photos it never saw
(the t10k file; the sample trains on the other), for `imgclf monitor`:

    clean/            photos of every class of the model, evenly
    prior_shift/      photos of two classes only
    covariate_shift/  every class, grey levels inverted
    ground_truth/     clean photos, answered verbosely, with labels/ in SageMaker's ground-truth
                      merge format keyed by each request's inferenceId

Each request is a JPEG sent to a running endpoint (serve_local.sh, or imgclf-serve), captured as
SageMaker captures it: <set>/capture/<endpoint>/AllTraffic/yyyy/mm/dd/hh/*.jsonl.

    python local_test/make_captures.py OUT --model local_test/test_dir/model --endpoint http://127.0.0.1:8080
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_data import CLASSES, DEFAULT_SOURCE, read_idx  # noqa: E402

SETS = ("clean", "prior_shift", "covariate_shift", "ground_truth")
VERBOSE = "application/json;verbose"
# (JPEG bytes, Accept) -> the endpoint's answer as text
Answer = Callable[[bytes, str], str]


def photos(classes: list[str], per_class: int, seed: int, source: Path = DEFAULT_SOURCE,
           size: int = 64) -> list[tuple[Image.Image, str]]:
    """Fashion-MNIST test photos of these classes, upscaled as the sample's (make_sample_data.py)."""
    images = read_idx(source / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    out = []
    for name in classes:
        for i in rng.permutation(np.flatnonzero(labels == CLASSES.index(name)))[:per_class]:
            out.append((Image.fromarray(images[i], "L").resize((size, size), Image.BICUBIC), name))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def capture_line(request: bytes, answer: str, inference_id: str, when: dt.datetime) -> str:
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": "image/jpeg", "mode": "INPUT",
                              "data": base64.b64encode(request).decode(), "encoding": "BASE64"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT", "data": answer,
                               "encoding": "JSON"}},
        "eventMetadata": {"eventId": str(uuid.uuid4()), "inferenceId": inference_id,
                          "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%S.000Z")},
        "eventVersion": "0"})


def ground_truth_line(label: str, inference_id: str) -> str:
    return json.dumps({"groundTruthData": {"data": label, "encoding": "CSV"},
                       "eventMetadata": {"eventId": inference_id}, "eventVersion": "0"})


def write_set(out: Path, name: str, samples: list[tuple[Image.Image, str]], answer: Answer, *,
              accept: str = "application/json", labels: bool = False, endpoint: str = "imgclf-endpoint") -> int:
    when = dt.datetime(2026, 12, 7, 18, tzinfo=dt.timezone.utc)
    hour = when.strftime("%Y/%m/%d/%H")
    capture = out / name / "capture" / endpoint / "AllTraffic" / hour / f"{name}.jsonl"
    capture.parent.mkdir(parents=True, exist_ok=True)
    truth = []
    with open(capture, "w") as f:
        for n, (img, label) in enumerate(samples):
            inference_id = f"{name}-{n:05d}"
            body = jpeg(img)
            f.write(capture_line(body, answer(body, accept), inference_id, when) + "\n")
            truth.append(ground_truth_line(label, inference_id))
    if labels:
        gt = out / name / "labels" / hour / "labels.jsonl"
        gt.parent.mkdir(parents=True, exist_ok=True)
        gt.write_text("\n".join(truth) + "\n")
    return len(samples)


def write_all(out: Path, classes: list[str], answer: Answer, per_class: int = 50, seed: int = 0) -> dict[str, int]:
    """The four sets; images per set."""
    invert = [(Image.eval(img, lambda v: 255 - v), label) for img, label in photos(classes, per_class, seed + 2)]
    two = classes[:2]
    return {
        "clean": write_set(out, "clean", photos(classes, per_class, seed), answer),
        "prior_shift": write_set(out, "prior_shift", photos(two, per_class * len(classes) // 2, seed + 1), answer),
        "covariate_shift": write_set(out, "covariate_shift", invert, answer),
        "ground_truth": write_set(out, "ground_truth", photos(classes, per_class, seed + 3), answer, accept=VERBOSE,
                                  labels=True),
    }


def http_answer(endpoint: str) -> Answer:
    import requests

    def answer(body: bytes, accept: str) -> str:
        r = requests.post(endpoint.rstrip("/") + "/invocations", data=body, timeout=60,
                          headers={"Content-Type": "image/jpeg", "Accept": accept})
        r.raise_for_status()
        return r.text

    return answer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--model", type=Path, required=True, help="the model folder (its classes are photographed)")
    p.add_argument("--endpoint", default="http://127.0.0.1:8080", help="the running endpoint")
    p.add_argument("--per-class", type=int, default=50)
    a = p.parse_args()
    classes = json.loads((a.model / "model.json").read_text())["classes"]
    counts = write_all(a.out, classes, http_answer(a.endpoint), a.per_class)
    print(" ".join(f"{k}={v}" for k, v in counts.items()), "captured requests in", a.out)


if __name__ == "__main__":
    main()
