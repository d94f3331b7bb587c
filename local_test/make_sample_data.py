#!/usr/bin/env python3
"""Write real images in class folders (train/valid/test) from Fashion-MNIST.

Fashion-MNIST (MIT licence, 28x28 grayscale photos of clothing) comes with Debian's
`dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`) or from any folder
holding its four idx .gz files. The images are saved as JPEG, upscaled so that they go through
the same decode/resize path as photos:

    python local_test/make_sample_data.py OUT --per-class 200 --classes 10 --size 64
    python local_test/make_sample_data.py OUT --per-class 40 --names trouser,sneaker,bag,dress
    python local_test/make_sample_data.py OUT --per-class 1000 --file t10k   # the other 10,000 photos
"""
from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train", "t10k")  # Fashion-MNIST's training (60,000 images) and test (10,000) files
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
SPLITS = {"train": 0.7, "valid": 0.15, "test": 0.15}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        _, _, dims = struct.unpack(">HBB", f.read(4))
        shape = struct.unpack(">" + "I" * dims, f.read(4 * dims))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def write_sample(out: Path, *, per_class: int, num_classes: int = 10, size: int = 64,
                 source: Path = DEFAULT_SOURCE, seed: int = 0, names: list[str] | None = None,
                 file: str = "train") -> dict[str, int]:
    """`per_class` images of each class in `names` (default: the first `num_classes`) from one of
    Fashion-MNIST's FILES, split 70/15/15; counts per split. Images of the two files never overlap."""
    unknown = sorted(set(names or ()) - set(CLASSES))
    if unknown:
        raise SystemExit(f"unknown class {', '.join(unknown)}; choose from {', '.join(CLASSES)}")
    wanted = [CLASSES.index(n) for n in names] if names else range(num_classes)
    if not (source / f"{file}-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"Fashion-MNIST not found in {source}: apt-get install dataset-fashion-mnist")
    images = read_idx(source / f"{file}-images-idx3-ubyte.gz")
    labels = read_idx(source / f"{file}-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(SPLITS, 0)
    for label in wanted:
        chosen = rng.permutation(np.flatnonzero(labels == label))[:per_class]
        n_train = round(len(chosen) * SPLITS["train"])
        n_valid = round(len(chosen) * SPLITS["valid"])
        parts = {"train": chosen[:n_train], "valid": chosen[n_train:n_train + n_valid],
                 "test": chosen[n_train + n_valid:]}
        for split, idx in parts.items():
            folder = out / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx:
                img = Image.fromarray(images[i], "L").resize((size, size), Image.BICUBIC)
                img.save(folder / f"{i:05d}.jpg", quality=90)
            counts[split] += len(idx)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--classes", type=int, default=10, choices=range(2, 11), metavar="2..10")
    p.add_argument("--names", type=lambda s: s.split(","), default=None,
                   help=f"comma-separated class names instead of the first --classes ({','.join(CLASSES)})")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--file", choices=FILES, default="train",
                   help="Fashion-MNIST's training (60,000 images) or test file (10,000, none of the other's)")
    a = p.parse_args()
    counts = write_sample(a.out, per_class=a.per_class, num_classes=a.classes, size=a.size, source=a.source,
                          seed=a.seed, names=a.names, file=a.file)
    print(" ".join(f"{k}={v}" for k, v in counts.items()), "images in", a.out)


if __name__ == "__main__":
    main()
