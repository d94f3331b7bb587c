"""Loose JPEG files against WebDataset shards through the training job's input pipeline.

The same Fashion-MNIST photos (local_test/make_sample_data.py: JPEGs of 64x64 from Debian's
dataset-fashion-mnist), once as class folders and once packed by `imgclf data pack`, go through
what a training job builds: builders.build_datasets and build_loaders (the training dataset, its
transform and loader workers), one epoch each, in a fresh process per run. A run's time starts
before the dataset is built (listing the folders, or reading the index) and ends with the
epoch's last batch.

Files opened are counted for real: each pipeline runs once more under `strace -f -e
trace=open,openat` (worker processes included), counting successful opens of paths under the
data folder (directories and the index included); strace slows a process, so those runs are not
timed. Where this process may write /proc/sys/vm/drop_caches (root), the page cache is dropped
before every timed run; the kinds take turns for `--rounds` rounds, every round is printed, and
the last line takes each kind's fastest run (other work on the machine only ever slows a run):

    data-bench: images=<n> loose_ips=<images/s> shards_ips=<images/s> loose_opens=<n> shards_opens=<n>

    python bench/bench_data.py [--images 5000] [--num-workers 2] [--image-size 224] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def epoch(data: Path, num_workers: int, image_size: int) -> dict:
    """One epoch of the job's training loader over `data`/train (validation: `data`/valid)."""
    import torch

    from imgclf.train import builders, distributed
    from imgclf.callbacks import Callbacks
    from imgclf.train.contract import TrainingEnvironment
    from imgclf.train.job import parse_hyperparameters

    args = parse_hyperparameters({"image-size": str(image_size), "num-workers": str(num_workers)})
    out = Path(tempfile.mkdtemp())
    env = TrainingEnvironment(model_dir=out, output_data_dir=out, output_dir=out, checkpoint_dir=out,
                              channels={"training": data / "train", "validation": data / "valid"}, hyperparameters={})
    job = builders.Job(args, env, distributed.Topology(), torch.device("cpu"), Callbacks(()), num_workers)
    start = time.perf_counter()
    splits = builders.build_datasets(env, args, builders.build_transforms(args))
    loader = builders.build_loaders(job, splits)["train"]
    images = skipped = 0
    for batch, _, n_skipped in loader:
        images += len(batch)
        skipped += n_skipped
    return {"images": images, "skipped": skipped, "seconds": time.perf_counter() - start,
            "batch_size": args.batch_size}


def child(kind_dir: Path, args, strace_log: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--run", str(kind_dir), "--num-workers", str(args.num_workers),
           "--image-size", str(args.image_size)]
    if strace_log:
        # -ff: one log per process, so that no call is split across lines by another process's
        cmd = ["strace", "-ff", "-qq", "-e", "trace=open,openat", "-o", str(strace_log), *cmd]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def opens_under(strace_log: Path, folder: Path) -> int:
    """Successful open/openat calls on paths under `folder`, in every process's log (`strace_log`.<pid>)."""
    pattern = re.compile(r'open(?:at)?\((?:[^,]+, )?"([^"]*)".*\) = (\d+)')
    prefix = str(folder.resolve())
    return sum(1 for log in strace_log.parent.glob(strace_log.name + ".*") for line in log.read_text().splitlines()
               if (m := pattern.search(line)) and m.group(1).startswith(prefix))


def drop_caches() -> bool:
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
        return True
    except OSError:
        return False


def prepare(work: Path, images: int) -> tuple[Path, Path, int]:
    sys.path.insert(0, str(ROOT / "local_test"))
    from make_sample_data import SPLITS, write_sample

    from imgclf.launch import datasets

    loose, packed = work / "loose", work / "shards"
    counts = write_sample(loose, per_class=math.ceil(images / 10 / SPLITS["train"]), size=64)
    for index in datasets.pack(loose, packed).values():
        print(f"packed: {sum(index.shards.values())} images in {len(index.shards)} shard(s)", flush=True)
    return loose, packed, counts["train"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000, help="training images (at least)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--image-size", type=int, default=224, help="the job's image-size (the transform's crop)")
    p.add_argument("--rounds", type=int, default=3, help="timed runs of each kind, taking turns")
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # one timed epoch in this process
    args = p.parse_args()
    if args.run:
        print(json.dumps(epoch(args.run, args.num_workers, args.image_size)))
        return
    flags = sorted(set(re.findall(r"\b(avx512_bf16|amx_tile|avx512f|avx2)\b", Path("/proc/cpuinfo").read_text())))
    print(f"cpu flags: {' '.join(flags)}; {os.cpu_count()} cpus; num_workers={args.num_workers} "
          f"image_size={args.image_size}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        loose, packed, n = prepare(Path(tmp), args.images)
        best = {"loose": 0.0, "shards": 0.0}
        for round_ in range(1, args.rounds + 1):
            for kind, folder in (("loose", loose), ("shards", packed)):
                dropped = drop_caches()
                run = child(folder, args)
                assert run["images"] + run["skipped"] > n - run["batch_size"], run  # all but the last partial batch
                ips = run["images"] / run["seconds"]
                best[kind] = max(best[kind], ips)
                print(f"round={round_} {kind}: {run['images']} images in {run['seconds']:.2f} s = {ips:.1f} images/s "
                      f"(page cache {'dropped' if dropped else 'not dropped: not writable here'})", flush=True)
        opens = {}
        for kind, folder in (("loose", loose), ("shards", packed)):
            log = Path(tmp) / f"{kind}.strace"
            child(folder, args, log)
            opens[kind] = opens_under(log, folder)
    print(f"data-bench: images={n} loose_ips={best['loose']:.1f} shards_ips={best['shards']:.1f} "
          f"loose_opens={opens['loose']} shards_opens={opens['shards']}")


if __name__ == "__main__":
    main()
