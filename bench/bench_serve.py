#!/usr/bin/env python3
"""Serving benchmark: the real `imgclf-serve` (multi-model-server) with a trained ResNet50 artifact,
against the raw network and against AWS's own PyTorch serving stack, side by side in one run.

The artifact comes from the real training job (`imgclf-train`: ResNet50 from scratch, 3 epochs on
Fashion-MNIST class folders at 224 px), so it carries what training writes for serving: the
OpenVINO float32 and int8 copies and their agreement with float32 on the validation set. With
--pretrain-epochs, the job fine-tunes a ResNet50 that an earlier job trained on other photos instead
(`pretrain`): a surer network, in place of one fine-tuned from ImageNet weights. AWS's stack loads
the same weights. Requests are 500x375 photo-like JPEGs.

Prints:
  * for IMGCLF_PRECISION=auto (and the path it chose), int8 and fp32: images/s at concurrency 8
    and the ratio to AWS's stack (sagemaker-pytorch-inference 2.0.25 on TorchServe 0.12.0 with the
    typical user script bench/serve_aws_baseline_inference.py, OMP_NUM_THREADS=1; target >= 1.5),
    and to the raw batched forward of the same path in the server's thread layout;
  * the serving overhead at concurrency 1: p50/p99 latency minus the raw single-image forward of
    the same path (target < 15 ms), split into the front (public port vs multi-model-server's
    private port) and the rest (multi-model-server, its worker and the handler), with the
    handler's own time per request from its log;
  * seconds from process start to the first 200 on /ping, checked by a request right after
    (target <= 10 s), and each model worker's resident memory.

Throughput figures come from rounds in which the measures take turns, so load from other
processes on the machine hits them alike.

    .venv/bin/python bench/bench_serve.py                          # ~15 min on 2 cores
    .venv/bin/python bench/bench_serve.py --model-dir DIR          # your own resnet50 artifact
    .venv/bin/python bench/bench_serve.py --pretrain-epochs 8 --train-per-class 200 --train-epochs 2
                                            # fine-tuned from a ResNet50 trained on other photos (~60 min)
    .venv/bin/python bench/bench_serve.py --aws-venv ''            # skip AWS's stack
    .venv/bin/python bench/bench_serve.py --aws-as-shipped         # also AWS's stack without OMP_NUM_THREADS

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
import re
import shutil
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import free_port  # noqa: E402

# the raw forward runs as the server's workers do (server.py sets this for them); before torch loads
OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
PRECISIONS = ("auto", "int8", "fp32")
CPU_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")  # emulate an older CPU's kernels (oneDNN's, torch's)


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


def train_artifact(root: Path, per_class: int, epochs: int, pretrain_epochs: int) -> Path:
    """A ResNet50 artifact from the real training job (which also exports the serving formats):
    from scratch, or with `pretrain_epochs` fine-tuned from `pretrain`'s weights. Training is not
    what this benchmark measures, so its jobs run without the CPU caps the benchmark may run under
    (CPU_CAPS), with the processor's bf16 where it has it; the int8 copy is still made and checked
    with AVX2's arithmetic (on a VNNI CPU in a capped child: imgclf/quantize.py, int8_kernels.py)."""
    from serve_precision_agreement import train_fashion_mnist

    if not pretrain_epochs:
        return train_fashion_mnist(root, arch="resnet50", image_size=224, per_class=per_class, epochs=epochs,
                                   environ=without_cpu_caps(),
                                   extra=["--recipe", "linear", "--pretrained", "false", "--freeze", "false",
                                          "--batch-size", "16"])  # linear's ingredients, all layers: as measured
    return train_fashion_mnist(root, arch="resnet50", image_size=224, per_class=per_class, epochs=epochs,
                               pretrained=pretrain(root / "pretrain", pretrain_epochs), environ=without_cpu_caps(),
                               extra=["--recipe", "finetune", "--freeze-bn-stats", "false",
                                      "--backbone-lr-ratio", "0.5", "--lr", "0.01", "--momentum", "0.9",
                                      "--warmup-epochs", "0.25", "--label-smoothing", "0"])


def without_cpu_caps() -> dict:
    return {k: v for k, v in os.environ.items() if k not in CPU_CAPS}


def pretrain(root: Path, epochs: int) -> Path:
    """A ResNet50 trained from scratch on Fashion-MNIST's test file, whose photos none of the serving
    job's are, `epochs` at 96 px (about 5 times fewer pixels than 224, so about 5 times faster), then
    one more at 224 px, the serving job's size (progressive resizing: at 224 px the 96 px network
    classified 0.60 of the serving job's validation photos, after that epoch 0.74). Returns a
    pretrained channel, the folder holding its `resnet50.pth`. It stands in for ImageNet weights:
    the networks that a from-scratch job makes in this benchmark's minutes answer many images with
    near ties, which int8 flips whatever the layers it keeps. The fine-tuned one has fewer, but
    whether int8 then keeps 99 % depends on the weights it starts from (docs/design/int8-accuracy.md)."""
    from serve_precision_agreement import train_fashion_mnist

    common = ["--recipe", "finetune", "--backbone-lr-ratio", "1", "--momentum", "0.9", "--weight-decay", "5e-5",
              "--label-smoothing", "0", "--serving-formats", "false"]
    channel = root / "pretrained"
    channel.mkdir(parents=True)
    at96 = train_fashion_mnist(root / "96px", arch="resnet50", image_size=96, per_class=1000, epochs=epochs,
                               file="t10k", environ=without_cpu_caps(),
                               extra=[*common, "--pretrained", "false", "--lr", "0.05", "--batch-size", "64",
                                      "--crop-scale", "0.35"])
    shutil.copy(at96 / "model.pt", channel / "resnet50.pth")
    at224 = train_fashion_mnist(root / "224px", arch="resnet50", image_size=224, per_class=1000, epochs=1,
                                file="t10k", environ=without_cpu_caps(), pretrained=channel,
                                extra=[*common, "--lr", "0.01", "--batch-size", "32", "--warmup-epochs", "0.1",
                                       "--freeze-bn-stats", "false"])
    shutil.copy(at224 / "model.pt", channel / "resnet50.pth")
    return channel


def aws_artifact(ours: Path, root: Path) -> Path:
    """The same weights as a typical user's model.tar.gz contents for AWS's stack."""
    from imgclf.artifact.card import load_card

    aws = root / "aws" / "model"
    (aws / "code").mkdir(parents=True)
    shutil.copy(ours / "model.pt", aws / "model.pth")
    (aws / "classes.json").write_text(json.dumps(load_card(ours).classes))
    shutil.copy(HERE / "serve_aws_baseline_inference.py", aws / "code" / "inference.py")
    return aws


def handler_for(model_dir: Path, threads: int, precision: str):
    from imgclf.serve.environment import ServingEnvironment
    from imgclf.serve.handler import ImageClassifierHandler

    h = ImageClassifierHandler(ServingEnvironment(model_dir=model_dir, models_dir=model_dir, torch_threads=threads,
                                                  precision=precision))

    class Context:
        system_properties = {"model_dir": str(model_dir), "gpu_id": None}

    h.initialize(Context())
    return h


class RawForward:
    """The handler's forward pass alone (its runner, no decoding) in a process that stays up
    between measures, so the raw rate is measured in turn with the endpoints."""

    def __init__(self, model_dir: Path, threads: int, precision: str, batch: int = 8):
        ctx = mp.get_context("spawn")  # a fresh interpreter, like the server's workers
        self.pipe, child = ctx.Pipe()
        ctx.Process(target=self.serve, args=(child, model_dir, threads, precision, batch), daemon=True).start()
        self.runner = self.pipe.recv()

    @staticmethod
    def serve(pipe, model_dir: Path, threads: int, precision: str, batch: int) -> None:
        import numpy as np

        h = handler_for(model_dir, threads, precision)
        rng = np.random.default_rng(0)
        pixels, one = (rng.standard_normal((n, 3, 224, 224), dtype=np.float32) for n in (batch, 1))
        h.inference(pixels), h.inference(one)
        pipe.send(h.runner.name)
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
        self.pipe.send(("rate", seconds))
        return self.pipe.recv()

    def latency(self, n: int = 30) -> float:
        self.pipe.send(("latency", n))
        return self.pipe.recv()

    def close(self) -> None:
        self.pipe.send(None)


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


def invoke(session, url: str, photo: bytes, path: str = "/invocations"):
    return session.post(url + path, data=photo, headers={"Content-Type": "image/jpeg"}, timeout=300)


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


def latencies(url: str, photos: list[bytes], n: int, path: str = "/invocations") -> tuple[float, float]:
    """p50 and p99 seconds, one request at a time."""
    with requests.Session() as s:
        for p in photos[:3]:
            invoke(s, url, p, path)
        times = []
        for k in range(n):
            start = time.perf_counter()
            r = invoke(s, url, photos[k % len(photos)], path)
            times.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
    q = statistics.quantiles(times, n=100, method="inclusive")
    return q[49], q[98]


def worker_memory_mb(ep: Endpoint) -> float:
    """Resident memory of the endpoint's model worker(s) (MMS's Python workers), in MB."""
    procs = psutil.Process(ep.process.pid).children(recursive=True)
    workers = [p for p in procs if "model_service_worker" in " ".join(p.cmdline())]
    return sum(p.memory_info().rss for p in workers) / 1e6


def mms_port(ep: Endpoint) -> int:
    return int(re.search(r"starting multi-model-server on 127.0.0.1:(\d+)", ep.log.read_text())[1])


def handler_ms(ep: Endpoint, since: int) -> list[float]:
    """The handler's own time per batch (its log line) for batches of one request, logged after `since`."""
    text = ep.log.read_text(errors="replace")[since:]
    return [float(ms) for ms in re.findall(r"batch of 1 requests, 1 images, (\d+(?:\.\d+)?) ms", text)]


def main(args) -> None:
    from imgclf.artifact.card import load_card
    from imgclf.serve.environment import ServingEnvironment
    from imgclf.names import cpu_count

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-serve-"))
    root.mkdir(parents=True, exist_ok=True)
    default = ServingEnvironment.from_env({})
    workers, threads = default.workers, default.torch_threads  # the server's default layout
    endpoints, raws = {}, {}
    try:
        photos = write_photos(16)
        ours_dir = Path(args.model_dir) if args.model_dir else \
            train_artifact(root, args.train_per_class, args.train_epochs, args.pretrain_epochs)
        card = load_card(ours_dir)
        aws_dir = aws_artifact(ours_dir, root)
        print(f"{card.arch}, {len(card.classes)} classes, {card.eval.crop_size}x{card.eval.crop_size}; "
              f"{cpu_count()} CPUs; requests: 500x375 JPEGs ({sum(map(len, photos)) // len(photos) // 1000} kB); "
              f"server layout {workers} worker x {threads} threads", flush=True)
        for name, f in card.formats.items():
            print(f"  {name} in the artifact: {f.agreement}", flush=True)

        def ours(precision):
            port = free_port()
            cmd = [sys.executable, "-m", "imgclf.serve.server", "--model-dir", str(ours_dir), "--port", str(port),
                   "--host", "127.0.0.1", "--precision", precision]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "IMGCLF_", "SM_"))}
            if OMP_WAIT_POLICY is None:
                env.pop("OMP_WAIT_POLICY", None)  # the server sets its own
            endpoints[precision] = Endpoint(f"imgclf-serve {precision}", cmd, env, port, root,
                                            root / f"{len(endpoints)}.log")

        def aws(name, **extra_env):
            serve = Path(args.aws_venv) / "bin" / "serve"
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SM_", "VIRTUAL_ENV"))}
            if OMP_WAIT_POLICY is None:
                env.pop("OMP_WAIT_POLICY", None)  # as shipped: none of our settings
            env.update(SAGEMAKER_BASE_DIR=str(aws_dir.parent), SAGEMAKER_BIND_TO_PORT=str(port),
                       PATH=f"{serve.parent}:{env['PATH']}", **extra_env)
            endpoints[name] = Endpoint(name, [str(serve)], env, port, root, root / f"{len(endpoints)}.log")

        # start-up of each alone, so nothing else competes for the cores
        ready, chosen, model_mb = {}, {}, {}
        for precision in PRECISIONS:
            ours(precision)
            ready[precision] = endpoints[precision].wait(photos[0], use_ping=True)
            log = endpoints[precision].log.read_text(errors="replace")
            loaded = re.search(r"served by ([^,]+(?:\([^)]*\))?), \d+ threads, model memory (\S+) MB", log)
            chosen[precision], model_mb[precision] = loaded[1], loaded[2]
            print(f"imgclf-serve --precision {precision}: {chosen[precision]}; first /ping 200 after "
                  f"{ready[precision]:.1f} s, and the request right after it answered", flush=True)
            print("  " + re.search(r"precision \w+: .*", log)[0], flush=True)
        for precision in PRECISIONS:
            raws[precision] = RawForward(ours_dir, threads, precision)
        memory = {p: worker_memory_mb(endpoints[p]) for p in PRECISIONS}

        done = {}

        def measure(names):
            """images/s of each name, over `rounds` rounds in which they take turns."""
            for name in names:
                done.pop(name, None)
            for _ in range(args.rounds):
                for name in names:
                    n, t = raws[name[4:]].rate(args.seconds) if name.startswith("raw ") else \
                        throughput(endpoints[name].url, photos, 8, args.seconds)
                    done.setdefault(name, [0, 0.0])
                    done[name][0] += n
                    done[name][1] += t
            return {name: done[name][0] / done[name][1] for name in names}

        versus = {}
        aws_configs = [("AWS stack OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1"})]
        if args.aws_as_shipped:
            aws_configs.insert(0, ("AWS stack as shipped", {}))
        if not args.aws_venv:
            aws_configs = []
        rate = {}
        for name, extra in aws_configs or [(None, None)]:
            # AWS's launcher refuses a second TorchServe on the machine: one configuration at a time
            if name:
                aws(name, **extra)
                aws_ready = endpoints[name].wait(photos[0], use_ping=False)
            names = [*PRECISIONS, *([name] if name else []), *(f"raw {p}" for p in PRECISIONS)]
            rate = measure(names)
            print(f"\nimages/s at concurrency 8 ({args.rounds} rounds of {args.seconds:.0f} s each, taken in turn):")
            for n in names:
                label = f"imgclf-serve {n} ({chosen[n]})" if n in PRECISIONS else \
                    f"raw forward, batch 8, {raws[n[4:]].runner}, 1 x {threads} threads" if n.startswith("raw ") else \
                    f"{n} (first answer after {aws_ready:.1f} s)"
                print(f"  {label}: {rate[n]:.1f}", flush=True)
            if name:
                versus[name] = {p: rate[p] / rate[name] for p in PRECISIONS}
                endpoints.pop(name).stop()

        # concurrency 1: through the front, and straight to multi-model-server's private port
        lat, direct, handler = {}, {}, {}
        for p in PRECISIONS:
            since = len(endpoints[p].log.read_text(errors="replace"))
            lat[p] = latencies(endpoints[p].url, photos, args.latency_requests)
            handler[p] = statistics.median(handler_ms(endpoints[p], since) or [float("nan")])
            direct[p] = latencies(f"http://127.0.0.1:{mms_port(endpoints[p])}", photos, args.latency_requests,
                                  path="/predictions/model")
        raw_latency = {p: raws[p].latency() for p in PRECISIONS}

        print("\nsummary")
        for p in PRECISIONS:
            for name, ratios in versus.items():
                print(f"  imgclf-serve {p} ({chosen[p]}) / {name}, concurrency 8: {ratios[p]:.2f}  (target >= 1.5)")
        for p in PRECISIONS:
            print(f"  imgclf-serve {p} / its raw batched forward: {rate[p] / rate['raw ' + p]:.2f}")
        for p in PRECISIONS:
            (p50, p99), (d50, _), raw = lat[p], direct[p], raw_latency[p]
            print(f"  {p}, concurrency 1: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; raw single-image forward "
                  f"{raw * 1000:.0f} ms; serving overhead p50 {(p50 - raw) * 1000:+.0f} ms = front "
                  f"{(p50 - d50) * 1000:+.0f} ms + multi-model-server and worker {(d50 - raw) * 1000:+.0f} ms "
                  f"(handler's own time per request {handler[p]:.0f} ms)  (target < 15 ms)")
        for p in PRECISIONS:
            print(f"  {p}: process start to first /ping 200 (model answering): {ready[p]:.1f} s (target <= 10 s); "
                  f"model worker memory {memory[p]:.0f} MB, of which the loaded model {model_mb[p]} MB")
    finally:
        for ep in endpoints.values():
            ep.stop()
        for raw in raws.values():
            raw.close()
        if not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", help="a resnet50 artifact to serve (default: train one)")
    p.add_argument("--work-dir", help="where the trained artifacts and server logs go, and stay (default: a "
                                      "temporary folder, removed at the end)")
    p.add_argument("--train-per-class", type=int, default=60, help="Fashion-MNIST images per class to train on")
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--pretrain-epochs", type=int, default=0,
                   help="first train a ResNet50 this many epochs at 96 px on other photos, and fine-tune it (`pretrain`)")
    p.add_argument("--seconds", type=float, default=6, help="length of each throughput measure")
    p.add_argument("--rounds", type=int, default=3, help="measures of each endpoint, taken in turn")
    p.add_argument("--latency-requests", type=int, default=40)
    p.add_argument("--aws-venv", default="/tmp/aws-venv", help="venv with AWS's stack; '' to skip it")
    p.add_argument("--aws-as-shipped", action="store_true", help="also AWS's stack without OMP_NUM_THREADS=1")
    main(p.parse_args())
