#!/usr/bin/env python3
"""Serving benchmark: the real `imgclf-serve` (multi-model-server) with a ResNet50 artifact
(random weights: speed does not depend on them), against the raw network and against AWS's own
PyTorch serving stack, all measured side by side in one run.

Prints:
  * endpoint throughput at concurrency 8 / raw batched forward throughput of the same model
    (target >= 0.85), for the batching configuration and for one image per request;
  * p50/p99 latency at concurrency 1 minus the raw single-image forward latency (the serving
    overhead), for both configurations;
  * throughput at concurrency 8 / AWS's stack (sagemaker-pytorch-inference 2.0.25 on TorchServe
    0.12.0 with the typical user script bench/serve_aws_baseline_inference.py), as shipped and
    with OMP_NUM_THREADS=1 (target >= 1.5);
  * seconds from process start to the first 200 on /ping, checked by a request right after.

The raw forward uses the handler's own path (channels-last, bf16 when `auto` picks it) in the
server's thread layout, and also as one single-threaded process per CPU; the ratio is printed
against both. Every figure comes from rounds in which the measures take turns, so load from
other processes on the machine hits them alike. Requests are 500x375 photo-like JPEGs.

    .venv/bin/python bench/bench_serve.py                          # ~5 min on 2 cores
    .venv/bin/python bench/bench_serve.py --aws-venv ''            # skip AWS's stack

AWS's stack is installed apart from the project (it pins its own server):
    python3 -m venv /tmp/aws-venv && /tmp/aws-venv/bin/pip install sagemaker-pytorch-inference==2.0.25 \\
        torchserve==0.12.0 PyYAML sagemaker-inference==1.10.1 'setuptools<81' 'numpy<2' pillow
    echo $PWD/.venv/lib/python3.11/site-packages > \\
        /tmp/aws-venv/lib/python3.11/site-packages/zz_project_torch.pth   # reuse the project's torch
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

# the raw forward runs as the server's workers do (server.py sets this for them); before torch loads
OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
CLASSES = 120  # dog breeds


def write_photos(n: int, size=(500, 375)) -> list[bytes]:
    """Photo-like JPEGs (smooth shapes, texture, noise), ~ImageNet size."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(0)
    photos = []
    for _ in range(n):
        img = Image.new("RGB", size, tuple(rng.randint(0, 255) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rng.randint(0, size[0]), rng.randint(0, size[1])
            r = rng.randint(20, 160)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randint(0, 255) for _ in range(3)))
        img = img.filter(ImageFilter.GaussianBlur(3))
        noise = np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 12, (size[1], size[0], 3))
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype("uint8"))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
    return photos


def make_artifacts(root: Path) -> tuple[Path, Path]:
    """The product's artifact, and the same weights as a typical user's model.tar.gz contents."""
    import torch

    from imgclf.model import ModelCard, create_model, save_artifact
    from imgclf.presets import EvalSettings

    torch.manual_seed(0)
    classes = tuple(f"breed_{i:03d}" for i in range(CLASSES))
    ours = root / "model"
    save_artifact(ours, create_model("resnet50", CLASSES), ModelCard("resnet50", classes, EvalSettings.for_image_size(224)))
    aws = root / "aws" / "model"
    (aws / "code").mkdir(parents=True)
    shutil.copy(ours / "model.pt", aws / "model.pth")
    (aws / "classes.json").write_text(json.dumps(classes))
    shutil.copy(HERE / "serve_aws_baseline_inference.py", aws / "code" / "inference.py")
    return ours, aws


def handler_for(model_dir: Path, threads: int):
    from imgclf.serve.environment import ServingEnvironment
    from imgclf.serve.handler import ImageClassifierHandler

    h = ImageClassifierHandler(ServingEnvironment(model_dir=model_dir, models_dir=model_dir, torch_threads=threads))

    class Context:
        system_properties = {"model_dir": str(model_dir), "gpu_id": None}

    h.initialize(Context())
    return h


class RawForward:
    """The handler's forward pass alone, no decoding, in `processes` processes that stay up
    between measures (so the raw rate can be measured in turn with the endpoints)."""

    def __init__(self, model_dir: Path, processes: int, threads: int, batch: int = 8):
        ctx = mp.get_context("spawn")  # fresh interpreters, like the server's workers: no thread pool inherited
        self.pipes = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            ctx.Process(target=self.serve, args=(child, model_dir, threads, batch), daemon=True).start()
            self.pipes.append(parent)
        self.precision = [p.recv() for p in self.pipes][0]

    @staticmethod
    def serve(pipe, model_dir: Path, threads: int, batch: int) -> None:
        import torch

        h = handler_for(model_dir, threads)
        pixels, one = torch.randn(batch, 3, 224, 224), torch.randn(1, 3, 224, 224)
        h.inference(pixels), h.inference(one)
        pipe.send("bf16" if h.autocast else "fp32")
        while (cmd := pipe.recv()) is not None:
            kind, amount = cmd
            if kind == "rate":
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < amount:
                    h.inference(pixels)
                    n += batch
                pipe.send((n, time.perf_counter() - start))
            else:  # median latency of `amount` single-image passes
                times = []
                for _ in range(amount):
                    start = time.perf_counter()
                    h.inference(one)
                    times.append(time.perf_counter() - start)
                pipe.send(statistics.median(times))

    def rate(self, seconds: float) -> tuple[int, float]:
        """(images, seconds) over all processes running side by side."""
        for p in self.pipes:
            p.send(("rate", seconds))
        results = [p.recv() for p in self.pipes]
        return sum(n for n, _ in results), max(t for _, t in results)

    def latency(self, n: int = 30) -> float:
        self.pipes[0].send(("latency", n))
        return self.pipes[0].recv()

    def close(self) -> None:
        for p in self.pipes:
            p.send(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    """A server process in its own process group; stopped with its whole group."""

    def __init__(self, name: str, cmd: list[str], env: dict, port: int, cwd: Path, log: Path):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.started = time.monotonic()
        with open(log, "wb") as out:
            self.process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait(self, photo: bytes, use_ping: bool, timeout: float = 300) -> float:
        """Seconds from process start until /ping says 200 (or, for AWS's stack, until a request
        succeeds); either way a request must then succeed."""
        while time.monotonic() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if use_ping:
                    ok = requests.get(self.url + "/ping", timeout=5).status_code == 200
                else:
                    ok = invoke(requests, self.url, photo).status_code == 200
                if ok:
                    ready = time.monotonic() - self.started
                    r = invoke(requests, self.url, photo)
                    if r.status_code != 200:
                        raise RuntimeError(f"{self.name}: /ping said 200 but /invocations said {r.status_code}: {r.text}")
                    return ready
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:  # children that left the group's leader behind
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def invoke(session, url: str, photo: bytes):
    return session.post(url + "/invocations", data=photo, headers={"Content-Type": "image/jpeg"}, timeout=300)


def throughput(url: str, photos: list[bytes], concurrency: int, seconds: float) -> tuple[int, float]:
    """(images, seconds) with `concurrency` clients each sending one image per request, back to back."""
    counts, errors = [0] * concurrency, []
    warm = threading.Barrier(concurrency + 1)
    go = threading.Event()
    window = {}

    def client(i):
        with requests.Session() as s:
            for k in range(2):  # warm-up: every worker sees the batch shapes once
                invoke(s, url, photos[(i + k) % len(photos)])
            warm.wait()
            go.wait()
            k = 0
            while time.monotonic() < window["end"]:
                r = invoke(s, url, photos[(i * 7 + k) % len(photos)])
                if r.status_code != 200:
                    errors.append(r.text)
                counts[i] += 1
                k += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    warm.wait()
    start = time.monotonic()
    window["end"] = start + seconds
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests: {errors[0]}")
    return sum(counts), time.monotonic() - start


def latencies(url: str, photos: list[bytes], n: int) -> tuple[float, float]:
    """p50 and p99 seconds, one request at a time."""
    with requests.Session() as s:
        for p in photos[:3]:
            invoke(s, url, p)
        times = []
        for k in range(n):
            start = time.perf_counter()
            r = invoke(s, url, photos[k % len(photos)])
            times.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
    q = statistics.quantiles(times, n=100, method="inclusive")
    return q[49], q[98]


def main(args) -> None:
    from imgclf.serve.environment import ServingEnvironment, cpu_count

    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    cpus = cpu_count()
    default = ServingEnvironment.from_env({})
    workers, threads = default.workers, default.torch_threads  # the server's default layout
    endpoints, raws = {}, {}
    try:
        ours_dir, aws_dir = make_artifacts(root)
        photos = write_photos(16)
        print(f"ResNet50, {CLASSES} classes, 224x224; {cpus} CPUs; requests: 500x375 JPEGs "
              f"({sum(map(len, photos)) // len(photos) // 1000} kB); server layout {workers} worker x {threads} threads",
              flush=True)
        raws[f"{workers} x {threads} threads"] = RawForward(ours_dir, workers, threads)
        if (workers, threads) != (cpus, 1):
            raws[f"{cpus} x 1 thread"] = RawForward(ours_dir, cpus, 1)
        precision = next(iter(raws.values())).precision

        def ours(name, *flags):
            port = free_port()
            cmd = [sys.executable, "-m", "imgclf.serve.server", "--model-dir", str(ours_dir), "--port", str(port),
                   "--host", "127.0.0.1", *flags]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "IMGCLF_", "SM_"))}
            if OMP_WAIT_POLICY is None:
                env.pop("OMP_WAIT_POLICY", None)  # the server sets its own
            endpoints[name] = Endpoint(name, cmd, env, port, root, root / f"{len(endpoints)}.log")

        def aws(name, **extra_env):
            serve = Path(args.aws_venv) / "bin" / "serve"
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SM_", "VIRTUAL_ENV"))}
            if OMP_WAIT_POLICY is None:
                env.pop("OMP_WAIT_POLICY", None)  # as shipped: none of our settings
            env.update(SAGEMAKER_BASE_DIR=str(aws_dir.parent), SAGEMAKER_BIND_TO_PORT=str(port),
                       PATH=f"{serve.parent}:{env['PATH']}", **extra_env)
            endpoints[name] = Endpoint(name, [str(serve)], env, port, root, root / f"{len(endpoints)}.log")

        # start-up alone, so nothing else competes for the cores
        ours("imgclf-serve batched")
        ready = endpoints["imgclf-serve batched"].wait(photos[0], use_ping=True)
        print(f"imgclf-serve: first /ping 200 after {ready:.1f} s, and the request right after it answered", flush=True)
        ours("imgclf-serve one image per request", "--batch-size", "1")
        endpoints["imgclf-serve one image per request"].wait(photos[0], use_ping=True)

        # rounds: each measure in turn, so a neighbour's load hits all of them alike
        done = {}

        def measure(names):
            for _ in range(args.rounds):
                for name in names:
                    n, t = raws[name].rate(args.seconds) if name in raws else \
                        throughput(endpoints[name].url, photos, 8, args.seconds)
                    done.setdefault(name, [0, 0.0])
                    done[name][0] += n
                    done[name][1] += t
            return {name: done[name][0] / done[name][1] for name in names}

        rate = measure([*raws, "imgclf-serve batched", "imgclf-serve one image per request"])
        lat = {name: latencies(endpoints[name].url, photos, args.latency_requests) for name in list(endpoints)}
        raw_latency = next(iter(raws.values())).latency()
        endpoints.pop("imgclf-serve one image per request").stop()
        raw = max(rate[name] for name in raws)
        print(f"\nimages/s at concurrency 8 ({args.rounds} rounds of {args.seconds:.0f} s each, taken in turn):")
        for name in raws:
            print(f"  raw forward, batch 8, {precision}, {name}: {rate[name]:.1f}")
        for name in lat:
            print(f"  {name}: {rate[name]:.1f}")
        batched, single = rate["imgclf-serve batched"], rate["imgclf-serve one image per request"]

        # AWS's stack, one at a time (its launcher refuses a second TorchServe on the machine and
        # shares /etc/sagemaker-ts.properties), each in turn with imgclf-serve
        versus = {}
        if args.aws_venv:
            for name, extra in (("AWS stack as shipped", {}), ("AWS stack OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1"})):
                aws(name, **extra)
                ready_aws = endpoints[name].wait(photos[0], use_ping=False)
                done.pop("imgclf-serve batched")
                pair = measure(["imgclf-serve batched", name])
                endpoints.pop(name).stop()
                versus[name] = pair["imgclf-serve batched"] / pair[name]
                print(f"  {name}: {pair[name]:.1f} (first answer after {ready_aws:.1f} s), "
                      f"imgclf-serve batched in the same rounds: {pair['imgclf-serve batched']:.1f}", flush=True)

        print("\nsummary")
        same = rate[next(iter(raws))]  # the server's own layout
        print(f"  endpoint / raw batched forward at concurrency 8, against the server's layout "
              f"({next(iter(raws))}): batched {batched / same:.2f}, one image per request {single / same:.2f}  "
              f"(target >= 0.85)")
        print(f"  the same against the fastest raw layout ({raw:.1f} img/s): batched {batched / raw:.2f}, "
              f"one image per request {single / raw:.2f}")
        for name, (p50, p99) in lat.items():
            print(f"  {name}, concurrency 1: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; serving overhead "
                  f"p50 {(p50 - raw_latency) * 1000:+.0f} ms, p99 {(p99 - raw_latency) * 1000:+.0f} ms "
                  f"over the raw single-image forward ({raw_latency * 1000:.0f} ms)")
        for name, ratio in versus.items():
            print(f"  imgclf-serve batched / {name}: {ratio:.2f}  (target >= 1.5)")
        print(f"  process start to first /ping 200 (model answering): {ready:.1f} s")
    finally:
        for ep in endpoints.values():
            ep.stop()
        for raw in raws.values():
            raw.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6, help="length of each throughput measure")
    p.add_argument("--rounds", type=int, default=3, help="measures of each endpoint, taken in turn")
    p.add_argument("--latency-requests", type=int, default=40)
    p.add_argument("--aws-venv", default="/tmp/aws-venv", help="venv with AWS's stack; '' to skip it")
    main(p.parse_args())
