#!/usr/bin/env python3
"""Training throughput: the product's training step fed from JPEG files vs from tensors in memory.

Both runs use the same network, optimizer and step function (`imgclf.train.engine.train_one_epoch`);
only the input differs:
  * memory: pre-made batches of random tensors, no decoding (the upper bound);
  * jpeg:   the training DataLoader over JPEG files in class folders (decode, random crop, flip,
            normalise) with the default number of workers.
With --compare-precision it instead runs the same in-memory batches in float32 and in mixed
precision (bf16 autocast + channels_last on a CPU with AVX-512 BF16 or AMX, AMP on CUDA), and
prints images/s for both and their ratio. Otherwise it prints images/s for both inputs and
`jpeg / memory`, the share of the step's speed the input pipeline keeps (target >= 0.9).
With `amp` (the default) it runs mixed precision with channels_last; on CUDA it also
prints the ratio to NVIDIA's published ResNet50 AMP training figure (2,470 images/s on one A100).

    .venv/bin/python bench/bench_train_throughput.py                  # CPU: frozen ResNet50, batch 16
    .venv/bin/python bench/bench_train_throughput.py --compare-precision --freeze false  # fp32 vs bf16
    python bench/bench_train_throughput.py --batch-size 256 --freeze false --steps 30   # a GPU
"""
from __future__ import annotations

import argparse
import itertools
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from imgclf.train import distributed, precision
from imgclf.artifact import network
from imgclf.artifact.card import ARCHS
from imgclf.train import backbone
from imgclf.train.data import ImageFolderDataset, find_classes, make_loader
from imgclf.train.hyperparameters import str2bool
from imgclf.train.presets import ClassificationPresetTrain
from imgclf.train.builders import default_workers
from imgclf.train.engine import Learner, StopRequest, train_one_epoch

NVIDIA_A100_RESNET50_AMP = 2470.0  # images/s, NVIDIA DeepLearningExamples, 1x A100 80GB, AMP, batch 256


def write_photos(root: Path, n: int, size=(500, 375), classes: int = 10) -> None:
    """Photo-like JPEGs (smooth shapes, texture, noise) of the dog-breed data's typical size."""
    rng = random.Random(0)
    for i in range(n):
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.random.default_rng(i).integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        noise = np.random.default_rng(i + 1).normal(0, 12, (size[1], size[0], 3))
        img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        img.save(folder / f"{i:05d}.jpg", quality=rng.choice([85, 90, 95]))


class Limited:
    """The first `steps` batches of a loader (with a len, as train_one_epoch expects)."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps = loader, steps

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.steps)

    def __len__(self):
        return self.steps


def measure(model, loader, args, device, warmup: int) -> float:
    """Images/s of train_one_epoch over `loader` after `warmup` steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler(device, args.amp))
    learner = Learner(model, model, torch.nn.CrossEntropyLoss(), optimizer, scaler, device, mixed=args.amp)
    stop = StopRequest.for_device(device)
    if warmup:
        train_one_epoch(learner, Limited(loader, warmup), 0, stop)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    tally, _ = train_one_epoch(learner, Limited(loader, args.steps), 1, stop)
    tally.loss.item()  # waits for the last step on an accelerator
    return tally.seen / (time.perf_counter() - start)


def compare_precision(model, batch, args, device) -> None:
    """float32 vs mixed precision on the same in-memory batch, alternated round by round."""
    runs = {False: [], True: []}
    for r in range(args.rounds):
        for mixed in (False, True):
            model.to(memory_format=precision.memory_format(mixed))
            args.amp = mixed
            runs[mixed].append(measure(model, itertools.repeat(batch), args, device, args.warmup if r == 0 else 0))
    fp32, mixed = statistics.median(runs[False]), statistics.median(runs[True])
    flags = sorted(set(re.findall(r"\b(avx512_bf16|amx_tile|avx2)\b", Path("/proc/cpuinfo").read_text())))
    print(f"{args.arch} freeze={args.freeze} batch={args.batch_size} image={args.image_size}, "
          f"{torch.get_num_threads()} threads, CPU flags {','.join(flags)}, {args.rounds} rounds of {args.steps} steps")
    print(f"float32:            {fp32:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in runs[False])})")
    print(f"mixed precision:    {mixed:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in runs[True])})")
    print(f"mixed / float32:    {mixed / fp32:8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50", choices=ARCHS)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--freeze", type=str2bool, default=True)
    p.add_argument("--amp", type=str2bool, default=True)
    p.add_argument("--steps", type=int, default=4, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="memory/jpeg runs alternate; medians are compared")
    p.add_argument("--num-workers", type=int, default=None, help="default: the training job's default")
    p.add_argument("--compare-precision", action="store_true", help="float32 vs mixed precision, same batches")
    p.add_argument("--images", type=Path, help="class folders of JPEGs (default: generated 500x375 photos)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = args.num_workers if args.num_workers is not None else default_workers(distributed.Topology())
    n_images = args.batch_size * (args.steps + args.warmup + 1)  # the loader cycles over these

    with tempfile.TemporaryDirectory() as tmp:
        root = args.images
        if root is None:
            root = Path(tmp) / "jpeg"
            write_photos(root, n_images)
        classes = find_classes(root)
        model = network.create_model(args.arch, len(classes))
        if args.freeze:
            backbone.freeze_backbone(model)
        memory_format = precision.memory_format(args.amp)
        model = model.to(device, memory_format=memory_format)

        batch = (torch.randn(args.batch_size, 3, args.image_size, args.image_size),
                 torch.randint(len(classes), (args.batch_size,)), 0)
        if args.compare_precision:
            compare_precision(model, batch, args, device)
            return
        ds = ImageFolderDataset(root, classes, ClassificationPresetTrain(crop_size=args.image_size))
        loader = make_loader(ds, batch_size=args.batch_size, num_workers=workers, shuffle=True, drop_last=True,
                             pin_memory=device.type == "cuda")
        jpeg_batches = itertools.chain.from_iterable(itertools.repeat(loader))
        # alternate the two inputs so that load from elsewhere on a shared machine hits both alike
        memory_runs, jpeg_runs = [], []
        for r in range(args.rounds):
            warmup = args.warmup if r == 0 else 0
            memory_runs.append(measure(model, itertools.repeat(batch), args, device, warmup))
            jpeg_runs.append(measure(model, jpeg_batches, args, device, warmup))
        memory, jpeg = statistics.median(memory_runs), statistics.median(jpeg_runs)

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.arch} freeze={args.freeze} batch={args.batch_size} image={args.image_size} on {name}, "
          f"mixed precision+channels_last={args.amp}, workers={workers}, "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"memory tensors: {memory:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in memory_runs)})")
    print(f"jpeg files:     {jpeg:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in jpeg_runs)})")
    print(f"jpeg / memory:  {jpeg / memory:8.2f}  (target >= 0.9)")
    if device.type == "cuda":
        print(f"vs NVIDIA ResNet50 AMP on 1x A100 ({NVIDIA_A100_RESNET50_AMP:.0f} images/s): "
              f"memory {memory / NVIDIA_A100_RESNET50_AMP:.2f}x, jpeg {jpeg / NVIDIA_A100_RESNET50_AMP:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
