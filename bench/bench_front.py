#!/usr/bin/env python3
"""The public port's own cost: the aiohttp front against the hand-written HTTP/1.1 front it
replaced, each in front of the same small upstream (standing in for multi-model-server, so that
only the front's work differs), measured side by side in one run.

Prints, at concurrency 1 and 8, median requests/s and p50/p99 latency for: the upstream called
directly, through the old front, and through the new one; then each front's added latency (p50
minus direct) and the new front's throughput / the old front's. Every front and the upstream run
in their own process, as in the server; the rounds take turns so that load from other processes
hits every measure alike. Requests carry a 60 kB body (a photo-sized JPEG) and get ~150 bytes back.

    .venv/bin/python bench/bench_front.py                  # ~1 min on 2 cores
    .venv/bin/python bench/bench_front.py --old-rev 3fe4723 --rounds 5 --seconds 3

The old front is read from git (`git show REV:src/imgclf/serve/front.py`), so it is measured as
it was shipped.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "3fe4723"  # the last commit with the hand-written front
BODY = os.urandom(60_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_upstream(port: int) -> None:
    """Answers every POST with a small JSON document once it has read the body (as MMS does)."""
    from aiohttp import web

    async def handle(request):
        await request.read()
        return web.json_response({"predictions": [[{"label": "beagle", "probability": 0.91},
                                                   {"label": "basset", "probability": 0.05}]]})

    async def main():
        runner = web.ServerRunner(web.Server(handle), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def run_old_front(path: str, port: int, upstream: int) -> None:
    spec = importlib.util.spec_from_file_location("old_front", path)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    front = old.Front(("127.0.0.1", port), upstream, multi_model=False, max_payload_bytes=6 << 20)
    front.model_ready.set()
    front.serve_forever()


def run_new_front(port: int, upstream: int) -> None:
    from imgclf.serve.front import Front

    async def main():
        front = Front(upstream, multi_model=False, max_payload_bytes=6 << 20)
        front.model_ready.set()
        await front.start("127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def load(url: str, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """(requests/s, latencies in s) from `concurrency` keep-alive clients for `seconds`."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = []
    stop_at = time.monotonic() + seconds

    def client(mine: list[float]) -> None:
        with requests.Session() as s:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                r = s.post(url, data=BODY, headers={"Content-Type": "image/jpeg"}, timeout=30)
                mine.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(r.status_code)

    threads = [threading.Thread(target=client, args=(mine,)) for mine in latencies]
    begin = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} errors from {url}: {errors[:5]}")
    flat = [x for mine in latencies for x in mine]
    return len(flat) / (time.monotonic() - begin), flat


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision with the hand-written front")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measure and round")
    args = ap.parse_args()

    old_src = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.old_rev}:src/imgclf/serve/front.py"],
                             capture_output=True, text=True, check=True).stdout
    old_path = Path(tempfile.mkdtemp(prefix="old-front-")) / "old_front.py"
    old_path.write_text(old_src)
    ctx = mp.get_context("spawn")
    upstream, old_port, new_port = free_port(), free_port(), free_port()
    procs = [ctx.Process(target=run_upstream, args=(upstream,), daemon=True),
             ctx.Process(target=run_old_front, args=(str(old_path), old_port, upstream), daemon=True),
             ctx.Process(target=run_new_front, args=(new_port, upstream), daemon=True)]
    for proc in procs:
        proc.start()
    targets = {"direct": upstream, "old front": old_port, "new front": new_port}
    for port in targets.values():
        wait_listening(port)
    urls = {name: f"http://127.0.0.1:{port}/invocations" for name, port in targets.items()}
    for url in urls.values():  # warm-up
        load(url, 2, 0.5)

    results = {(name, c): {"rps": [], "lat": []} for name in urls for c in (1, 8)}
    try:
        for r in range(args.rounds):
            for c in (1, 8):
                for name, url in urls.items():
                    rps, lat = load(url, c, args.seconds)
                    results[name, c]["rps"].append(rps)
                    results[name, c]["lat"] += lat
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for proc in procs:
            proc.terminate()

    print(f"{'':10} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50 ms':>13}")
    for c in (1, 8):
        direct_p50 = p(results["direct", c]["lat"], 50)
        for name in urls:
            res = results[name, c]
            p50, p99 = p(res["lat"], 50), p(res["lat"], 99)
            added = "" if name == "direct" else f"{1000 * (p50 - direct_p50):13.2f}"
            print(f"{name:10} {c:4d} {statistics.median(res['rps']):8.0f} {1000 * p50:8.2f} {1000 * p99:8.2f} {added}")
    for c in (1, 8):
        ratio = statistics.median(results["new front", c]["rps"]) / statistics.median(results["old front", c]["rps"])
        print(f"concurrency {c}: new front / old front throughput = {ratio:.2f}")


if __name__ == "__main__":
    main()
