#!/usr/bin/env python3
"""Image numbers: size, rebuild time after a one-line code change, and time from `docker run ... serve`
to the first 200 on /ping, measured in one run on this machine. With --serving, for images already
built (the CPU one and the full one side by side): size, time from `docker run` to the first real
answer, the whole container's memory (docker stats) serving with one worker, and the top-1 of each
on the same photos.

    python bench/bench_image.py [--image imgclf:latest] [--model-dir local_test/test_dir/model] [--runs 3]
    python bench/bench_image.py --serving imgclf-cpu:latest imgclf:latest --model-dir RESNET50_DIR --photos DIR

Builds with docker/build.sh (BASE_IMAGE and DOCKER_BUILD_ARGS from the environment). The rebuild is
measured on a copy of the build context with one line appended to a source file, so the tree is
left untouched; the model served is the one local_test/train_local.sh wrote.
"""
from __future__ import annotations

import argparse
import json
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


def post(url: str, body: bytes) -> dict | None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.load(r) if r.status == 200 else None
    except OSError:
        return None


def container_memory_mb(name: str) -> float:
    """The container's memory as `docker stats` reports it (the cgroup's usage less its page cache)."""
    out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name], check=True,
                         capture_output=True, text=True).stdout.split("/")[0].strip()
    value, unit = float(out.rstrip("KMGiB")), out.lstrip("0123456789.")
    return value * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]


def serving(image: str, model_dir: Path, photos: list[Path]) -> dict:
    """`docker run IMAGE serve` with one worker: seconds to the first answer, memory, top-1 per photo."""
    port, name = free_port(), f"imgclf-bench-{time.time_ns()}"
    first = photos[0].read_bytes()
    start = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-e",
                    "SAGEMAKER_MODEL_SERVER_WORKERS=1", "-v", f"{model_dir.resolve()}:/opt/ml/model", image, "serve"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        while (answer := post(f"http://127.0.0.1:{port}/invocations", first)) is None:
            if time.perf_counter() - start > 300:
                raise SystemExit(f"{image}: no answer within 300 s")
            time.sleep(0.05)
        cold = time.perf_counter() - start
        top1 = [post(f"http://127.0.0.1:{port}/invocations", p.read_bytes())["predictions"][0][0]["label"]
                for p in photos]
        return {"cold_start_s": cold, "memory_mb": container_memory_mb(name), "top1": top1}
    finally:
        subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compare_serving(images: list[str], model_dir: Path, photos: list[Path], runs: int) -> None:
    results = {image: [serving(image, model_dir, photos) for _ in range(runs)] for image in images}
    for image, rs in results.items():
        size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image], check=True,
                                  capture_output=True, text=True).stdout)
        colds = [r["cold_start_s"] for r in rs]
        print(f"{image}: size={size / 1e9:.2f}GB cold_start_to_first_answer_s median={statistics.median(colds):.1f} "
              f"min={min(colds):.1f} max={max(colds):.1f} runs={runs} container_memory_mb={rs[-1]['memory_mb']:.0f}")
    first, *others = images
    for other in others:
        same = sum(a == b for a, b in zip(results[first][0]["top1"], results[other][0]["top1"]))
        print(f"top-1 {first} vs {other}: {same}/{len(photos)} photos the same")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="imgclf:latest")
    p.add_argument("--model-dir", type=Path, default=ROOT / "local_test" / "test_dir" / "model")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--serving", nargs="+", metavar="IMAGE", help="compare these built images serving --model-dir")
    p.add_argument("--photos", type=Path, default=ROOT / "local_test" / "test_dir" / "input" / "data" / "test",
                   help="folder of JPEG photos (searched recursively; the first 20 are posted)")
    a = p.parse_args()
    if not (a.model_dir / CARD_FILE).is_file():
        raise SystemExit(f"no model in {a.model_dir}: run local_test/train_local.sh first")
    if a.serving:
        compare_serving(a.serving, a.model_dir, sorted(a.photos.rglob("*.jpg"))[:20], a.runs)
        return
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
