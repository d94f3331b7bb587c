#!/usr/bin/env python3
"""Image numbers: size, rebuild time after a one-line code change, and time from `docker run ... serve`
to the first 200 on /ping, measured in one run on this machine.

    python bench/bench_image.py [--image imgclf:latest] [--model-dir local_test/test_dir/model] [--runs 3]

Builds with docker/build.sh (BASE_IMAGE and DOCKER_BUILD_ARGS from the environment). The rebuild is
measured on a copy of the build context with one line appended to a source file, so the tree is
left untouched; the model served is the one local_test/train_local.sh wrote.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import free_port  # noqa: E402

from imgclf.names import CARD_FILE  # noqa: E402


def build(context: Path, tag: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(context / "docker" / "build.sh"), tag], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def rebuild_after_code_change(tag: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        for name in ("docker", "src", "pyproject.toml", "README.md", ".dockerignore"):
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, context / name)
        with open(context / "src" / "imgclf" / "train.py", "a") as f:
            f.write(f"# {time.time()}\n")
        seconds = build(context, tag)
    subprocess.run(["docker", "rmi", tag], check=True, stdout=subprocess.DEVNULL)
    return seconds


def time_to_ping(image: str, model_dir: Path) -> float:
    port, name = free_port(), f"imgclf-bench-{time.time_ns()}"
    start = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                    "-v", f"{model_dir.resolve()}:/opt/ml/model", image, "serve"], check=True, stdout=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 300:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("no 200 on /ping within 300 s")
    finally:
        subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="imgclf:latest")
    p.add_argument("--model-dir", type=Path, default=ROOT / "local_test" / "test_dir" / "model")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    if not (a.model_dir / CARD_FILE).is_file():
        raise SystemExit(f"no model in {a.model_dir}: run local_test/train_local.sh first")
    cached = build(ROOT, a.image)
    size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", a.image], check=True,
                              capture_output=True, text=True).stdout)
    rebuild = rebuild_after_code_change(a.image + "-rebuild")
    pings = [time_to_ping(a.image, a.model_dir) for _ in range(a.runs)]
    print(f"image: size={size / 1e9:.2f}GB")
    print(f"image: build_cached_s={cached:.1f} rebuild_after_code_change_s={rebuild:.1f}")
    print(f"image: serve_to_first_ping_s median={statistics.median(pings):.1f} "
          f"min={min(pings):.1f} max={max(pings):.1f} runs={len(pings)}")


if __name__ == "__main__":
    main()
