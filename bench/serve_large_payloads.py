#!/usr/bin/env python3
"""Large payloads through the image: a 200 MB request to the async profile and a 20 MB record to
the batch profile (as SageMaker's batch transform sets it: SAGEMAKER_BATCH, MaxPayloadInMB 20),
each in a fresh container, with the container's memory after start-up and its peak (cgroup
memory.peak, or memory.max_usage_in_bytes on cgroup v1: page cache included).

    IMGCLF_TEST_IMAGE=imgclf:latest .venv/bin/python bench/serve_large_payloads.py [--model-dir DIR]

Without --model-dir it serves a ResNet50 artifact with random weights (as training writes it).
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
PEAK_FILES = ("/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes")
CURRENT_FILES = ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes")


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True).stdout.strip()


def cgroup_bytes(container: str, files: tuple[str, ...]) -> int:
    for path in files:
        raw = docker("exec", container, "cat", path, check=False)
        if raw.isdigit():
            return int(raw)
    raise RuntimeError(f"no cgroup memory file readable in {container}")


def async_body() -> tuple[bytes, str]:
    """64 images of 1024 x 1024 pixels as one uint8 .npy: 201 MB."""
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).integers(0, 256, (64, 1024, 1024, 3), np.uint8))
    return buf.getvalue(), "application/x-npy"


def batch_record() -> tuple[bytes, str]:
    """One PNG of 2600 x 2600 noisy pixels: about 20 MB, as a batch transform sends a file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (2600, 2600, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue(), "application/x-image"


def measure(image: str, model_dir: Path, env: dict[str, str], body: bytes, content_type: str) -> None:
    name = f"imgclf-large-{os.getpid()}-{int(time.time())}"
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    docker("run", "-d", "--rm", "--name", name, "-p", "127.0.0.1::8080", "-v", f"{model_dir}:/opt/ml/model:ro",
           *env_args, image, "serve")
    try:
        port = docker("port", name, "8080").splitlines()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/ping", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            sys.exit(f"{name} never healthy:\n{docker('logs', name, check=False)[-3000:]}")
        idle = cgroup_bytes(name, CURRENT_FILES)
        start = time.perf_counter()
        r = requests.post(url + "/invocations", data=body, headers={"Content-Type": content_type}, timeout=3700)
        seconds = time.perf_counter() - start
        peak = cgroup_bytes(name, PEAK_FILES)
        answer = r.json()
        shown = len(answer["predictions"]) if "predictions" in answer else answer
        limits = next((line.split("; ", 1)[1] for line in docker("logs", name).splitlines() if "profile " in line), "")
        print(f"{len(body) / 1e6:.0f} MB {content_type}: HTTP {r.status_code} in {seconds:.1f} s, {shown} images "
              f"answered; container memory after start-up {idle / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB "
              f"({(peak - idle) / len(body):.2f} x the body above idle); {limits}")
    finally:
        docker("rm", "-f", name, check=False)


def main(args) -> None:
    image = os.environ.get("IMGCLF_TEST_IMAGE", "imgclf:latest")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else None
        if model_dir is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from serve_support import make_artifact

            model_dir = make_artifact(Path(tmp) / "model", image_size=224, arch="resnet50")
        os.chmod(tmp, 0o755)
        body, content_type = async_body()
        measure(image, model_dir.resolve(), {"IMGCLF_SERVING_PROFILE": "async"}, body, content_type)
        del body
        body, content_type = batch_record()
        measure(image, model_dir.resolve(), {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
                                             "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD"}, body, content_type)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", help="artifact to serve (default: a random-weight ResNet50)")
    main(p.parse_args())
