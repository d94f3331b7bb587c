#!/usr/bin/env python3
"""How close the endpoint comes to what the machine can do at all for the same request.

In one run, on one artifact's serving copy and the same 512x512 photo-like JPEGs:
  forward   the copy's images/s with no server: OpenVINO, batch 1, throughput hint, all cores,
            as many requests in flight as it asks for (what `benchmark_app` measures);
  decode    one core's ms per JPEG for decoding and preprocessing it the reference way (full
            resolution with PIL, resize the short side to 256, crop 224, normalise), and the
            serving image's own way (`served decode`);
  limit     requests/s that decode + forward allow on these cores with no server:
            cores / (decode_s + cores / forward_ips);
  served    `docker run IMAGE serve` answering 8 keep-alive clients (concurrency 8);
  profile   the CPU time each process of the container spends per request at concurrency 8 (the
            front, the model server's JVM, the model worker) against the client's and the idle
            cores', the worker's own split of a batch (decode, forward, answer) from its log, and
            at concurrency 1 the latency against the worker's time.
The last line:
  serve-limit: forward_ips=<n> decode_ms=<n> limit_rps=<n> served_rps=<n> ratio=<served/limit>
with the reference decode in decode_ms and limit_rps; the line before it gives the limit with the
served decode. The measures take turns in rounds (--rounds, --seconds each), every image's
container up at once, so load from other processes hits them alike.

    .venv/bin/python bench/bench_limit.py --image imgclf:test-cpu                       # ResNet50, int8
    .venv/bin/python bench/bench_limit.py --image imgclf:test-cpu --arch efficientnet_lite0
    .venv/bin/python bench/bench_limit.py --image A --image B     # two images, side by side

The artifact is built once into --work (random weights for resnet50, ImageNet ones for
efficientnet_lite0 where the lite extra is installed; speed does not depend on them), its int8 copy
calibrated on the photos.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import write_photos  # noqa: E402
from serving_container import ServingContainer  # noqa: E402

from imgclf.artifact import openvino_runtime as openvino  # noqa: E402
from imgclf.artifact.card import ServingFormat, load_card, write_card  # noqa: E402
from imgclf.artifact.images import EvalTransform, crop_start, resized_size  # noqa: E402
from imgclf.serve.decoder import decode  # noqa: E402

PHOTO_SIZE = (512, 512)
CONCURRENCY = 8
NUMBER = r"(\d+(?:\.\d+)?)"
BATCH_LOG = re.compile(rf"batch of (\d+) requests, (\d+) images, {NUMBER} ms(?: \(decode {NUMBER}, forward {NUMBER}, "
                       rf"answer {NUMBER}\))?")


def build_artifact(model_dir: Path, arch: str, photos: list[bytes]) -> Path:
    """An artifact with float32 and int8 OpenVINO copies, int8 calibrated on `photos`."""
    import torch

    from imgclf.artifact import export, quantize
    from imgclf.artifact.card import ModelCard
    from imgclf.artifact.images import EvalSettings
    from imgclf.artifact.network import create_model, save_artifact
    from imgclf.train.backbone import find_imagenet_weights, normalisation

    torch.manual_seed(0)
    model = create_model(arch, 133).eval()
    weights = find_imagenet_weights(arch, None) if arch != "resnet50" else None
    if weights is not None:  # its ImageNet backbone; the head stays random
        state = {k: v for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()
                 if not k.startswith(("fc.", "_fc."))}
        model.load_state_dict(state, strict=False)
    mean, std = normalisation(arch)
    card = ModelCard(arch, tuple(f"class_{i:03d}" for i in range(133)), EvalSettings.for_image_size(224, mean=mean, std=std))
    save_artifact(model_dir, model, card)
    fp32 = export.to_openvino(model, 224)
    export.save_model(fp32, model_dir / openvino.FILES[openvino.FP32_FORMAT])
    transform = EvalTransform(card.eval)
    pixels = np.stack([reference_pixels(p, transform) for p in photos[:32]])
    int8 = quantize.quantize(fp32, [pixels[i:i + 8] for i in range(0, len(pixels), 8)])
    export.save_model(int8, model_dir / openvino.FILES[openvino.INT8_FORMAT])
    write_card(model_dir, replace(card, formats={
        openvino.FP32_FORMAT: ServingFormat(openvino.FILES[openvino.FP32_FORMAT], "fp32"),
        openvino.INT8_FORMAT: ServingFormat(openvino.FILES[openvino.INT8_FORMAT], "int8", calibration_images=32)}))
    return model_dir


def reference_pixels(jpeg: bytes, transform: EvalTransform) -> np.ndarray:
    """The reference decode, fixed here so that the limit does not move with the server's code:
    every pixel decoded, Pillow's resize of the short side, the centre crop, and normalisation in
    numpy arithmetic (ToTensor + Normalize)."""
    settings = transform.settings
    with Image.open(io.BytesIO(jpeg)) as img:
        img = img.convert("RGB")
    img = img.resize(resized_size(*img.size, settings.resize_size), Image.BILINEAR)
    left, top = crop_start(img.width, settings.crop_size), crop_start(img.height, settings.crop_size)
    img = img.crop((left, top, left + settings.crop_size, top + settings.crop_size))
    pixels = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return (pixels - np.float32(settings.mean)[:, None, None]) / np.float32(settings.std)[:, None, None]


def served_pixels(jpeg: bytes, transform: EvalTransform) -> np.ndarray:
    """The serving image's decode (decoder.py) and transform."""
    return transform(decode(jpeg, "image/jpeg", transform.decode_min_side).images[0])


def decode_seconds(photos: list[bytes], pixels_of, transform: EvalTransform) -> list[float]:
    """One core's seconds for each photo."""
    times = []
    for jpeg in photos:
        start = time.perf_counter()
        pixels_of(jpeg, transform)
        times.append(time.perf_counter() - start)
    return times


class Forward:
    """The serving copy with no server: batch 1, OpenVINO's throughput hint on every core."""

    def __init__(self, model_dir: Path, precision: str, pixels: np.ndarray):
        import openvino as ov

        card = load_card(model_dir)
        fmt = openvino.INT8_FORMAT if precision == "int8" else openvino.FP32_FORMAT
        hint = "bf16" if precision == "bf16" else "f32"
        compiled = ov.Core().compile_model(str(model_dir / card.formats[fmt].file), "CPU",
                                           {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": hint})
        self.queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.inputs = [p[None] for p in pixels]
        self.images, self.seconds = 0, 0.0
        self.run(2)  # warm-up

    def run(self, seconds: float) -> None:
        start = time.perf_counter()
        done = 0
        while time.perf_counter() < start + seconds:
            self.queue.start_async(self.inputs[done % len(self.inputs)])
            done += 1
        self.queue.wait_all()
        self.images, self.seconds = self.images + done, self.seconds + time.perf_counter() - start

    @property
    def ips(self) -> float:
        return self.images / self.seconds


async def post_loop(port: int, photos: list[bytes], until: float, latencies: list[float], errors: list[str]) -> None:
    """One keep-alive client posting JPEGs until `until` (a cheap client: most of the CPU is the server's)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.perf_counter() < until:
            body = photos[i % len(photos)]
            i += 1
            start = time.perf_counter()
            writer.write(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            status = (await reader.readline()).split(b" ", 2)[1]
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if status != b"200" or b"predictions" not in answer:
                errors.append(f"{status.decode()} {answer[:200]!r}")
    finally:
        writer.close()


def load(port: int, photos: list[bytes], concurrency: int, seconds: float) -> tuple[int, float, list[float], float]:
    """(requests answered, seconds, latencies, the client's CPU seconds) of `concurrency` clients for `seconds`."""
    latencies, errors = [], []

    async def clients():
        until = time.perf_counter() + seconds
        await asyncio.gather(*(post_loop(port, photos[i::concurrency], until, latencies, errors)
                               for i in range(concurrency)))

    cpu, start = time.process_time(), time.perf_counter()
    asyncio.run(clients())
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if errors:
        sys.exit(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return len(latencies), elapsed, latencies, cpu


def role(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    if "java" in proc.name():
        return "model server (JVM)"
    if "model_service_worker" in cmd:
        return "model worker"
    if "imgclf" in cmd or "serve" in cmd:
        return "front"
    return "other"


def cpu_by_role(root_pid: int) -> dict[str, float]:
    """CPU seconds so far of each kind of process under `root_pid`, threads included."""
    seconds: dict[str, float] = {}
    root = psutil.Process(root_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            seconds[role(proc)] = seconds.get(role(proc), 0.0) + t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return seconds


def batches_since(logs: str, skip: int) -> list[tuple[int, ...]]:
    """The worker's batch lines after the first `skip`: (requests, images, ms[, decode, forward, answer])."""
    found = [tuple(float(g) for g in m.groups() if g is not None) for m in BATCH_LOG.finditer(logs)]
    return found[skip:]


def profile_line(batches: list[tuple[int, ...]]) -> str:
    requests = sum(b[0] for b in batches)
    if not requests:
        return "no batch lines in its log"
    line = f"{len(batches)} batches, {requests / len(batches):.1f} requests each, {sum(b[2] for b in batches) / requests:.2f} ms per request"
    if batches and len(batches[0]) == 6:
        parts = [sum(b[i] for b in batches) / requests for i in (3, 4, 5)]
        line += " (decode {:.2f}, forward {:.2f}, answer {:.2f})".format(*parts)
    return line


def busy_seconds(times) -> float:
    return sum(times) - times.idle - times.iowait


class Served:
    """One image's windows of load, summed: requests, seconds, latencies, CPU seconds by process
    kind, and the worker's batch lines."""

    def __init__(self, box: ServingContainer, concurrency: int):
        self.box, self.concurrency = box, concurrency
        self.requests, self.seconds, self.latencies, self.cpu, self.batches = 0, 0.0, [], {}, []

    def window(self, photos: list[bytes], seconds: float) -> None:
        seen = len(batches_since(self.box.logs(), 0))
        before, machine = cpu_by_role(self.box.pid), psutil.cpu_times()
        n, elapsed, latencies, client = load(self.box.port, photos, self.concurrency, seconds)
        after, machine_after = cpu_by_role(self.box.pid), psutil.cpu_times()
        parts = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        parts["client"] = client
        parts["other processes"] = busy_seconds(machine_after) - busy_seconds(machine) - sum(parts.values())
        parts["idle"] = (machine_after.idle - machine.idle) + (machine_after.iowait - machine.iowait)
        for k, v in parts.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + v
        self.requests, self.seconds = self.requests + n, self.seconds + elapsed
        self.latencies += latencies
        self.batches += batches_since(self.box.logs(), seen)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def report(self) -> str:
        p50 = 1000 * statistics.median(self.latencies)
        cpu = ", ".join(f"{k} {1000 * v / self.requests:.2f}" for k, v in self.cpu.items())
        return (f"c={self.concurrency}: {self.rps:.1f} requests/s, p50 {p50:.1f} ms\n"
                f"      CPU ms per request: {cpu}\n      worker: {profile_line(self.batches)}")


def main(args) -> None:
    photos = write_photos(args.photos, PHOTO_SIZE)
    model_dir = Path(args.work) / args.arch / "model"
    if not (model_dir / "model.json").exists():
        build_artifact(model_dir, args.arch, photos)
    transform = EvalTransform(load_card(model_dir).eval)
    cores = len(os.sched_getaffinity(0))
    flags = sorted(set(re.findall(r"avx512_bf16|amx_tile|avx2", Path("/proc/cpuinfo").read_text())))
    print(f"{args.arch} {args.precision}, {len(photos)} JPEGs of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, {cores} cores, "
          f"CPU flags {' '.join(flags)}, {args.rounds} rounds of {args.seconds:g} s per measure")
    boxes = {spec: ServingContainer(spec.split()[0], model_dir, [f"IMGCLF_PRECISION={args.precision}", *args.env,
                                                                 *spec.split()[1:]])
             for spec in args.image}
    try:
        for box in boxes.values():
            box.wait()
            box.top1(photos[:1])
            load(box.port, photos, CONCURRENCY, args.seconds)  # warm-up, the JVM's compiler included
        forward = Forward(model_dir, args.precision, np.stack([reference_pixels(p, transform) for p in photos]))
        decodes = {"reference": [], "served": []}
        served = {image: (Served(box, CONCURRENCY), Served(box, 1)) for image, box in boxes.items()}
        for _ in range(args.rounds):  # the measures take turns, so load from elsewhere hits them alike
            forward.run(args.seconds)
            decodes["reference"] += decode_seconds(photos, reference_pixels, transform)
            decodes["served"] += decode_seconds(photos, served_pixels, transform)
            for many, one in served.values():
                many.window(photos, args.seconds)
                one.window(photos, args.seconds / 2)
    finally:
        for box in boxes.values():
            box.stop()
    reference, served_decode = (1000 * statistics.median(decodes[k]) for k in ("reference", "served"))
    print(f"  forward {forward.ips:.1f} images/s; decode + preprocess on one core: reference {reference:.2f} ms, "
          f"served {served_decode:.2f} ms")
    for image, (many, one) in served.items():
        print(f"  {image} {' '.join(args.env)}\n    {many.report()}\n    {one.report()}")
    limit = cores / (reference / 1000 + cores / forward.ips)
    faster = cores / (served_decode / 1000 + cores / forward.ips)
    for image, (many, _) in served.items():
        print(f"{image}: limit with the served decode {faster:.1f} requests/s, ratio {many.rps / faster:.2f}")
    for image, (many, _) in served.items():
        print(f"serve-limit: forward_ips={forward.ips:.1f} decode_ms={reference:.2f} limit_rps={limit:.1f} "
              f"served_rps={many.rps:.1f} ratio={many.rps / limit:.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", action="append", required=True, metavar="'IMAGE [NAME=VALUE ...]'",
                   help="serving image, with settings of its own (repeat to compare)")
    p.add_argument("--arch", default="resnet50", choices=("resnet50", "efficientnet_lite0"))
    p.add_argument("--precision", default="int8", choices=("int8", "bf16", "fp32"))
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a serving setting for the containers, e.g. SAGEMAKER_MODEL_SERVER_WORKERS=2 (repeat)")
    p.add_argument("--photos", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5, help="per measure and round")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "imgclf-bench-limit"), help="where the artifact is kept")
    main(p.parse_args())
