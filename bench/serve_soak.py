#!/usr/bin/env python3
"""Soak: the real `imgclf-serve` under steady load for a fixed number of requests (and at most a
fixed time), reporting requests served, errors, latency and the server's memory at start and end.

The server (multi-model-server and its workers behind the aiohttp front) serves a small resnet18
artifact; clients send photo-sized JPEGs and, with --bad-share, a share of bad requests (corrupt
images, bad JSON, wrong npy dtype, no content type) whose expected 4xx counts as served. An
error is any other answer or a failed connection. Memory is the resident set of the server's
whole process tree (front, JVM, Python workers), taken after a warm-up and again at the end.

    .venv/bin/python bench/serve_soak.py --concurrency 16 --requests 20000 --max-seconds 600   # the long run
    .venv/bin/python bench/serve_soak.py --concurrency 4 --requests 200 --json                 # CI's short one

Exits 1 when there were errors or memory grew by 5 % or more (--max-growth).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]


def photos(n: int = 8) -> list[bytes]:
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(0)
    out = []
    for _ in range(n):
        img = Image.new("RGB", (500, 375), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rng.randrange(500), rng.randrange(375)
            draw.ellipse([x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)],
                         fill=tuple(rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        img.filter(ImageFilter.GaussianBlur(2)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def bad_requests() -> list[tuple[bytes, dict, int]]:
    """(body, headers, expected status)."""
    import numpy as np

    npy = io.BytesIO()
    np.save(npy, np.zeros((8, 8, 3), np.float32))
    return [
        (b"\xff\xd8\xff\xe0 not really a jpeg", {"Content-Type": "image/jpeg"}, 400),
        (b'{"image": ', {"Content-Type": "application/json"}, 400),
        (npy.getvalue(), {"Content-Type": "application/x-npy"}, 400),
        (b"plain words", {}, 415),
        (b"x", {"Content-Type": "text/csv"}, 415),
    ]


def tree_rss(pid: int) -> dict[str, int]:
    """Bytes resident in the process and its descendants, by role: front, mms (the JVM and its
    launcher), workers."""
    root = psutil.Process(pid)
    rss = {"front": 0, "mms": 0, "workers": 0}
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = " ".join(p.cmdline())
            role = "front" if p.pid == pid else "workers" if "model_service_worker" in cmd else "mms"
            rss[role] += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return rss


def start_server(model_dir: Path, port: int, workers: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "IMGCLF_", "SM_"))}
    if os.environ.get("SAGEMAKER_MODEL_SERVER_VMARGS"):
        env["SAGEMAKER_MODEL_SERVER_VMARGS"] = os.environ["SAGEMAKER_MODEL_SERVER_VMARGS"]
    env["IMGCLF_PRECISION"] = "fp32"
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "imgclf.serve.server", "--host", "127.0.0.1", "--port",
                                 str(port), "--model-dir", str(model_dir), "--workers", str(workers)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"imgclf-serve exited with {proc.returncode}")
        try:
            if requests.get(url + "/ping", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    raise TimeoutError("/ping never said 200")


def soak(url: str, total: int, concurrency: int, max_seconds: float, bad_share: float) -> dict:
    images, bad = photos(), bad_requests()
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + max_seconds

    def next_index() -> int | None:
        nonlocal issued
        with lock:
            if issued >= total or time.monotonic() >= deadline:
                return None
            issued += 1
            return issued

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as s:
            while (i := next_index()) is not None:
                if rng.random() < bad_share:
                    body, headers, expected = rng.choice(bad)
                else:
                    body, headers, expected = images[i % len(images)], {"Content-Type": "image/jpeg"}, 200
                start = time.perf_counter()
                try:
                    r = s.post(url + "/invocations", data=body, headers=headers, timeout=120)
                    ok = r.status_code == expected and (expected != 200 or r.json()["predictions"])
                    problem = None if ok else f"{r.status_code} (expected {expected}): {r.text[:200]}"
                except (requests.RequestException, ValueError, KeyError) as e:
                    problem = f"{type(e).__name__}: {e}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    begin = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - begin
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:5],
            "seconds": round(seconds, 1), "requests_per_s": round(len(latencies) / seconds, 2),
            "p50_ms": round(1000 * q[49], 1), "p99_ms": round(1000 * q[98], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000, help="requests to send (the soak stops at this count)")
    ap.add_argument("--max-seconds", type=float, default=600, help="... or after this long, whichever is first")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="model workers")
    ap.add_argument("--warmup", type=int, default=50, help="requests before the first memory reading")
    ap.add_argument("--bad-share", type=float, default=0.1, help="share of bad requests (answered 4xx)")
    ap.add_argument("--max-growth", type=float, default=0.05, help="memory growth that fails the run")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from serve_support import make_artifact

    tmp = Path(tempfile.mkdtemp(prefix="imgclf-soak-"))
    model_dir = make_artifact(tmp / "model", image_size=64)
    from conftest import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(model_dir, port, args.workers, tmp / "serve.log")
    try:
        wait_healthy(url, proc)
        soak(url, args.warmup, args.concurrency, 300, args.bad_share)  # the same load: pools and JIT settle
        rss_start = tree_rss(proc.pid)
        result = soak(url, args.requests, args.concurrency, args.max_seconds, args.bad_share)
        rss_end = tree_rss(proc.pid)
        worker_restarts = (tmp / "serve.log").read_text(errors="replace").count("Worker disconnected")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    start, end = sum(rss_start.values()), sum(rss_end.values())
    result.update(concurrency=args.concurrency, memory_start_mb=round(start / 2**20, 1),
                  memory_end_mb=round(end / 2**20, 1), memory_growth=round(end / start - 1, 4),
                  memory_by_role_mb={role: [round(rss_start[role] / 2**20), round(rss_end[role] / 2**20)]
                                     for role in rss_start},
                  worker_crashes=worker_restarts)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:16} {value}")
    failed = result["errors"] or result["worker_crashes"] or result["memory_growth"] >= args.max_growth
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
