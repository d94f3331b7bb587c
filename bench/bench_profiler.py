#!/usr/bin/env python3
"""Profiling overhead: training throughput with and without the job's profiler and rules.

Both sides run the product's training step (`imgclf.train.engine.train_one_epoch`) on the same model and
the same in-memory batches (no data loading, so the step is as short as it gets and the overhead
as large as it gets); one side passes the callback the job installs by default (`imgclf.debug`:
system metrics every 500 ms on a thread, step timings and losses, gradient and activation
statistics, all rules), the other none. Runs alternate, so load from elsewhere on a shared machine
hits both alike. It prints, for both, images per wall-clock second and images per CPU second of the
whole process (the sampling thread included; steadier than the wall clock on a machine that others
load), and the overhead, `1 - profiled / plain` (target <= 3 %).

    .venv/bin/python bench/bench_profiler.py                         # CPU: frozen ResNet50, batch 16
    python bench/bench_profiler.py --freeze false --batch-size 128    # a GPU
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import torch

from imgclf.train import distributed, precision
from imgclf.artifact import network
from imgclf.artifact.card import ARCHS
from imgclf.train import backbone
from imgclf.callbacks import Callbacks, TrainingJob
from imgclf.debug.monitor import Monitor
from imgclf.debug.settings import MonitorSettings
from imgclf.train.engine import Learner, StopRequest, train_one_epoch
from imgclf.train.hyperparameters import BY_NAME, str2bool


class Limited:
    """The first `steps` batches of an iterator, with a len, as train_one_epoch expects."""

    def __init__(self, batches, steps: int):
        self.batches, self.steps = batches, steps

    def __iter__(self):
        return itertools.islice(self.batches, self.steps)

    def __len__(self):
        return self.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50", choices=ARCHS)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--freeze", type=str2bool, default=True)
    p.add_argument("--amp", type=str2bool, default=True)
    p.add_argument("--steps", type=int, default=10, help="measured steps per run")
    p.add_argument("--rounds", type=int, default=5, help="plain/profiled runs alternate; medians are compared")
    args = p.parse_args()
    args.pretrained = BY_NAME["pretrained"].default  # the job's: the monitor watches the new head's start
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = network.create_model(args.arch, 10)
    if args.freeze:
        backbone.freeze_backbone(model)
    memory_format = precision.memory_format(args.amp)
    model = model.to(device, memory_format=memory_format)
    batch = (torch.randn(args.batch_size, 3, args.image_size, args.image_size), torch.randint(10, (args.batch_size,)),
             0)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler(device, args.amp))
    criterion = torch.nn.CrossEntropyLoss()
    topology, stop = distributed.Topology(), StopRequest.for_device(device)

    with tempfile.TemporaryDirectory() as tmp:
        # the job's defaults: profiler and rules on, 500 ms sampling, no trace
        monitor = Monitor(MonitorSettings(output_data_dir=Path(tmp)))
        env = Namespace(current_host="bench")
        monitor.on_train_begin(TrainingJob(model, criterion, optimizer, args, env, topology, device))
        sides = {name: Learner(model, model, criterion, optimizer, scaler, device, topology, callbacks, mixed=args.amp)
                 for name, callbacks in (("plain", Callbacks([])), ("profiled", Callbacks([monitor])))}

        def run(name: str, epoch: int) -> tuple[float, float]:
            """(images per wall-clock second, images per CPU second of the whole process)."""
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, cpu = time.perf_counter(), time.process_time()
            tally, _ = train_one_epoch(sides[name], Limited(itertools.repeat(batch), args.steps), epoch, stop)
            sides[name].callbacks.on_epoch_end(epoch, {"epoch": epoch, "train_loss": 1.0, "valid_loss": 1.0})
            tally.loss.item()  # waits for the last step on an accelerator
            return tally.seen / (time.perf_counter() - start), tally.seen / (time.process_time() - cpu)

        # The job's first steps also collect activation variances for PoorWeightInitialization (10
        # steps by default): a one-time cost, measured apart from the steady state compared below.
        first_steps = monitor.rules[[r.name for r in monitor.rules].index("PoorWeightInitialization")].steps
        saved_steps = args.steps
        args.steps = first_steps
        run("plain", 0)  # warm-up: allocator, kernels, threads
        first_plain, first_profiled = run("plain", 0), run("profiled", 0)
        args.steps = saved_steps
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "profiled": []}
        for r in range(args.rounds):
            order = ("plain", "profiled") if r % 2 == 0 else ("profiled", "plain")
            for name in order:
                runs[name].append(run(name, r + 1))
        monitor.on_train_end([])
        samples = len(monitor.data.system)

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.arch} freeze={args.freeze} batch={args.batch_size} image={args.image_size} on {name}, "
          f"{args.rounds} rounds of {args.steps} steps, {samples} system samples, {len(monitor.rules)} rules")
    for i, unit in enumerate(("images/s (wall clock)", "images per CPU second (all threads of the process)")):
        plain = statistics.median(r[i] for r in runs["plain"])
        profiled = statistics.median(r[i] for r in runs["profiled"])
        print(f"{unit}: plain {plain:.2f}, profiled {profiled:.2f}, profiled / plain {profiled / plain:.3f}, "
              f"overhead {100 * (1 - profiled / plain):.1f} % (target <= 3 %)")
        print(f"    runs: plain {', '.join(f'{r[i]:.2f}' for r in runs['plain'])}; "
              f"profiled {', '.join(f'{r[i]:.2f}' for r in runs['profiled'])}")
    print(f"the job's first {first_steps} steps (activation statistics, once per job), images/s: "
          f"{first_profiled[0]:.2f} profiled vs {first_plain[0]:.2f} plain")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
