"""Transfer-learning training job: what `docker run IMAGE train` runs.

Reads the SageMaker contract (contract.py), trains with SGD, validates each epoch, tests at the
end, writes the model artifact (model.py), checkpoints every epoch and on SIGTERM, and resumes
from the last checkpoint when restarted. Outside a container:

    SM_CHANNEL_TRAINING=images/train SM_MODEL_DIR=model imgclf-train --epochs 3 --arch resnet18
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import debug, distributed, ema, export, features, hyperparameters, linear_probe, optim, precision
from . import model as models
from .callbacks import Callback, Callbacks, StepRecord, TrainingJob
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .contract import TrainingEnvironment, UserError, run_job
from .data import ImageFolderDataset, ShardSampler, find_classes, make_loader, split_indices, subset
from .metrics import format_metrics
from .presets import ClassificationPresetEval, ClassificationPresetTrain, EvalSettings

log = logging.getLogger("imgclf.train")

SIGTERM_EXIT = 128 + signal.SIGTERM


def get_args_parser() -> argparse.ArgumentParser:
    """The job's flags, one per entry of the hyperparameter table (hyperparameters.py)."""
    return hyperparameters.get_args_parser(__doc__.splitlines()[0])


def parse_hyperparameters(raw: dict[str, str], argv: list[str] | None = None) -> argparse.Namespace:
    """Typed arguments from SageMaker's string hyperparameters, then command-line overrides."""
    return hyperparameters.parse(raw, argv, get_args_parser())


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainState:
    """What a checkpoint carries besides weights and optimizer."""

    epoch: int = 0  # completed epochs
    best_valid_loss: float = float("inf")
    epochs_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)

    def end_epoch(self, valid_loss: float) -> None:
        """Count the epoch and track the best validation loss for early stopping."""
        self.epoch += 1
        if valid_loss < self.best_valid_loss:
            self.best_valid_loss, self.epochs_without_improvement = valid_loss, 0
        else:
            self.epochs_without_improvement += 1

    def should_stop_early(self, patience: int) -> bool:
        return patience > 0 and self.epochs_without_improvement >= patience


class StopRequest:
    """Set by SIGTERM (a spot interruption or `docker stop`); the loop checks it between steps."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: checkpointing and stopping after this step")
        self.requested = True


def autocast(device: torch.device, enabled: bool):
    return precision.autocast(device, enabled)


class Tally:
    """Loss, correct and seen summed on the device (no host sync per step), plus skipped images."""

    def __init__(self, device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0
        self.skipped = 0

    def add(self, loss: torch.Tensor, output: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss += loss.detach().double() * len(targets)
        self.correct += (output.argmax(1) == targets).sum()
        self.seen += len(targets)

    def totals(self, topology, device) -> tuple[float, float, int, int]:
        """(loss sum, correct, seen, skipped) over all ranks."""
        loss, correct, seen, skipped = distributed.all_sum(
            [self.loss.item(), float(self.correct.item()), self.seen, self.skipped], topology, device)
        return loss, correct, int(seen), int(skipped)


def batches(loader, device, args, tally: Tally):
    """(images, targets) on the device, in the training layout; unreadable images counted in `tally`."""
    for images, targets, n_skipped in loader:
        tally.skipped += n_skipped
        if len(targets):
            layout = _memory_format(device, args) if images.dim() == 4 else torch.contiguous_format
            yield (images.to(device, non_blocking=True, memory_format=layout),
                   targets.to(device, non_blocking=True))


def train_one_epoch(model, criterion, optimizer, scaler, loader, device, epoch, args, topology, stop,
                    callbacks: Callback, schedule: optim.Schedule | None = None, weights_ema: ema.WeightsEma | None = None):
    """One pass over the training data. Returns (Tally, interrupted by SIGTERM)."""
    models.train_mode(model)
    tally = Tally(device)
    start = clock = time.perf_counter()

    def lap() -> float:  # seconds since the last lap; waits for the GPU only when a callback asks
        nonlocal clock
        if callbacks.device_sync and device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        elapsed, clock = now - clock, now
        return elapsed

    for step, (images, targets) in enumerate(batches(loader, device, args, tally), 1):
        data_s = lap()
        if distributed.any_rank(stop.requested, topology, device):
            return tally, True
        with autocast(device, args.amp):
            output = model(images)
            loss = criterion(output, targets)
        forward_s = lap()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        backward_s = lap()
        if schedule is not None:
            schedule.set_step((epoch - 1) * len(loader) + step - 1)
        scaler.step(optimizer)
        scaler.update()
        if weights_ema is not None:
            weights_ema.update(_unwrap(model))
        optimizer_s = lap()
        tally.add(loss, output, targets)
        callbacks.on_step_end(StepRecord(epoch, step, len(targets), loss.detach(), data_s, forward_s, backward_s,
                                         optimizer_s))
        if args.log_interval and step % args.log_interval == 0 and topology.is_main:
            rate = tally.seen / (time.perf_counter() - start)
            log.info("epoch=%d step=%d/%d loss=%.4f images_per_sec=%.1f", epoch, step, len(loader), loss.item(), rate)
        lap()  # bookkeeping is nobody's phase
    return tally, False


@torch.inference_mode()
def evaluate(model, criterion, loader, device, args, topology) -> tuple[float, float, int]:
    """(mean loss, accuracy, skipped images) over the loader, summed over all ranks."""
    model.eval()
    tally = Tally(device)
    for images, targets in batches(loader, device, args, tally):
        with autocast(device, args.amp):
            output = model(images)
        tally.add(criterion(output.float(), targets), output, targets)
    loss_sum, correct, seen, skipped = tally.totals(topology, device)
    if seen == 0:
        raise UserError("no readable images to evaluate on")
    return loss_sum / seen, correct / seen, skipped


def _memory_format(device, args):
    return precision.memory_format(args.amp)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------
# the job


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_datasets(env: TrainingEnvironment, args, train_tf, eval_tf):
    """(classes, train, valid, test-or-None) datasets from the channels."""
    if "training" not in env.channels:
        raise UserError("no training channel: give images in class folders as the 'training' channel")
    root = env.channels["training"]
    classes = find_classes(root)
    train_ds = ImageFolderDataset(root, classes, train_tf)
    if "validation" in env.channels:
        valid_ds = ImageFolderDataset(env.channels["validation"], classes, eval_tf)
    else:
        train_idx, valid_idx = split_indices(len(train_ds), args.valid_split, args.seed)
        log.info("no validation channel: holding out %d of %d training images", len(valid_idx), len(train_ds))
        valid_ds = subset(ImageFolderDataset(root, classes, eval_tf), valid_idx)
        train_ds = subset(train_ds, train_idx)
    test_ds = ImageFolderDataset(env.channels["test"], classes, eval_tf) if "test" in env.channels else None
    return classes, train_ds, valid_ds, test_ds


def build_model(args, classes, env: TrainingEnvironment, device) -> nn.Module:
    model = models.create_model(args.arch, len(classes))
    if args.pretrained:
        weights = models.find_imagenet_weights(args.arch, env.channels.get("pretrained"))
        if weights is None:
            raise UserError(
                f"no ImageNet weights for {args.arch}: add a 'pretrained' channel with {args.arch}.pth "
                f"(a torchvision state_dict), build the image with --build-arg PRETRAINED_ARCHS={args.arch}, "
                "or set pretrained=false to train from scratch"
            )
        models.load_backbone(model, weights)
    if args.freeze:
        models.freeze_backbone(model)
    return model.to(device)


def main(args: argparse.Namespace, env: TrainingEnvironment, local_rank: int = 0,
         callbacks: Sequence[Callback] = ()) -> int:
    """Train as `args` say; `callbacks` watch the loop (callbacks.py)."""
    topology = distributed.init(local_rank)
    try:
        return _train(args, env, topology, Callbacks(callbacks))
    finally:
        distributed.cleanup(topology)


def _train(args, env: TrainingEnvironment, topology: distributed.Topology, callbacks: Callbacks) -> int:
    stop = StopRequest()
    stop.install()
    device = torch.device(f"cuda:{topology.local_rank}" if torch.cuda.is_available() else "cpu")
    seed_everything(args.seed + topology.rank)
    num_workers = args.num_workers if args.num_workers is not None else default_workers(topology)

    mean, std = models.normalisation(args.arch)
    eval_settings = EvalSettings.for_image_size(args.image_size, mean=mean, std=std, crop_ratio=args.eval_crop_ratio)
    eval_tf = ClassificationPresetEval.from_settings(eval_settings)
    use_features = args.features or args.extract_features
    train_tf = (ClassificationPresetTrain(crop_size=args.image_size, mean=mean, std=std, auto_augment=args.auto_augment,
                                          random_erase=args.random_erase)
                if args.augment and not use_features else eval_tf)
    channel_features = None
    if use_features:
        features.check_job(args, topology.distributed)
        if args.features and "features" in env.channels:
            channel_features = features.open_channel(env.channels["features"], env.checkpoint_dir / "features")
    if channel_features is not None and "training" not in env.channels:  # the features alone are enough
        classes, train_ds, valid_ds, test_ds = channel_features.classes, None, None, None
    else:
        classes, train_ds, valid_ds, test_ds = build_datasets(env, args, train_tf, eval_tf)
    card = models.ModelCard(arch=args.arch, classes=tuple(classes), eval=eval_settings)

    model = build_model(args, classes, env, device)
    args = argparse.Namespace(**{**vars(args), "amp": precision.choose(
        model, device, requested=args.amp, image_size=args.image_size, batch_size=args.batch_size)})
    if args.lp_steps and args.pretrained and not use_features and not state_exists(env) and not topology.distributed:
        probe_train, probe_valid = build_datasets(env, args, eval_tf, eval_tf)[1:3]  # the test set is never used
        linear_probe.run(args, env, model, card, (probe_train, probe_valid, None), num_workers, device,
                         lambda: autocast(device, args.amp))
    net = model  # what the loop runs: the network, or only its head on cached backbone features
    images = train_ds, valid_ds  # the serving formats calibrate and check on images, not features
    if use_features:
        feature_set = features.for_job(args, env, model, card, channel_features, (train_ds, valid_ds, test_ds),
                                       num_workers, device, lambda: autocast(device, args.amp))
        if args.extract_features:
            log.info("features of %s written to %s", ", ".join(feature_set.splits), feature_set.path)
            return 0
        train_ds, valid_ds, test_ds = (feature_set.dataset(s) if s in feature_set.splits else None
                                       for s in features.SPLITS)
        net, num_workers = models.head(model), 0
    if topology.is_main:
        log.info("%d classes, %d training and %d validation images%s%s", len(classes), len(train_ds), len(valid_ds),
                 f", {len(test_ds)} test images" if test_ds else "", " (cached features)" if use_features else "")
    optimizer = optim.build_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler(device, args.amp))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    checkpoint = env.checkpoint_dir / CHECKPOINT_FILE
    state = TrainState(**(load_checkpoint(checkpoint, model, optimizer, scaler, card) or {}))
    if state.epoch and topology.is_main:
        log.info("resumed from %s after epoch %d", checkpoint, state.epoch)
    callbacks.on_train_begin(TrainingJob(model, criterion, optimizer, args, env, topology, device))
    if topology.distributed:
        model = net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    pin = device.type == "cuda"
    # the epoch's order from (seed, epoch) alone, whatever the loader's workers draw: images or cached
    # features are then seen in the same order, and a resumed epoch repeats the interrupted one's
    train_sampler = torch.utils.data.DistributedSampler(train_ds, topology.world_size, topology.rank, seed=args.seed)
    train_loader = make_loader(train_ds, batch_size=args.batch_size, num_workers=num_workers, sampler=train_sampler,
                               shuffle=True, drop_last=len(train_ds) > args.batch_size * topology.world_size,
                               pin_memory=pin, seed=args.seed)

    def eval_loader(ds):
        sampler = ShardSampler(len(ds), topology.rank, topology.world_size) if topology.distributed else None
        return make_loader(ds, batch_size=args.batch_size, num_workers=num_workers, sampler=sampler, pin_memory=pin)

    valid_loader = eval_loader(valid_ds)
    schedule = optim.Schedule(optimizer, epochs=args.epochs, steps_per_epoch=len(train_loader),
                              warmup_epochs=args.warmup_epochs, schedule=args.lr_schedule)
    weights_ema = ema.WeightsEma(_unwrap(net), args.ema_decay) if args.ema_decay else None
    best = ema.BestWeights()

    def evaluate_split(split: str, loader) -> tuple[float, float, int]:
        callbacks.on_evaluate_begin(split)
        loss, acc, skipped = evaluate(_unwrap(net), criterion, loader, device, args, topology)
        callbacks.on_evaluate_end(split, {f"{split}_loss": loss, f"{split}_acc": acc})
        return loss, acc, skipped

    if topology.is_main:
        (env.output_data_dir).mkdir(parents=True, exist_ok=True)
        (env.output_data_dir / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")

    while state.epoch < args.epochs:
        epoch = state.epoch + 1
        train_sampler.set_epoch(epoch)
        callbacks.on_epoch_begin(epoch)
        start = time.perf_counter()
        tally, interrupted = train_one_epoch(
            net, criterion, optimizer, scaler, train_loader, device, epoch, args, topology, stop, callbacks,
            schedule, weights_ema)
        if interrupted:
            if topology.is_main:
                save_checkpoint(checkpoint, _unwrap(model), optimizer, scaler, state, card)
                log.warning("stopped by SIGTERM in epoch %d; checkpoint %s resumes it", epoch, checkpoint)
            return SIGTERM_EXIT
        loss_sum, correct, seen, skipped = tally.totals(topology, device)
        if seen == 0:
            raise UserError("no readable training images")
        elapsed = time.perf_counter() - start
        valid_loss, valid_acc, valid_skipped = evaluate_split("valid", valid_loader)
        extra = {}
        if weights_ema is not None:
            ema_loss, ema_acc, _ = evaluate(weights_ema.module, criterion, valid_loader, device, args, topology)
            best.offer(_unwrap(net), valid_acc, valid_loss, f"epoch {epoch}")
            best.offer(weights_ema.module, ema_acc, ema_loss, f"epoch {epoch} EMA")
            extra = dict(ema_valid_loss=ema_loss, ema_valid_acc=ema_acc)

        state.end_epoch(valid_loss)
        metrics = dict(epoch=epoch, train_loss=loss_sum / seen, train_acc=correct / seen, valid_loss=valid_loss,
                       valid_acc=valid_acc, **extra, lr=optimizer.param_groups[0]["lr"], images_per_sec=seen / elapsed)
        state.history.append(metrics)
        if topology.is_main:
            log.info(format_metrics(**metrics))
            if skipped or valid_skipped:
                log.warning("epoch=%d skipped unreadable images: %d training, %d validation",
                            epoch, skipped, valid_skipped)
            save_checkpoint(checkpoint, _unwrap(model), optimizer, scaler, state, card)
        callbacks.on_epoch_end(epoch, metrics)
        if state.should_stop_early(args.early_stopping_patience):
            if topology.is_main:
                log.info("early stopping: valid_loss has not improved for %d epochs", args.early_stopping_patience)
            break

    if best.state is not None:
        best.restore(_unwrap(net))
        if topology.is_main:
            log.info("keeping the weights of %s (best valid_acc %.4f)", best.label, best.score[0])
    if test_ds is not None:
        test_loss, test_acc, test_skipped = evaluate_split("test", eval_loader(test_ds))
        if topology.is_main:
            log.info(format_metrics(test_loss=test_loss, test_acc=test_acc))
            state.history.append(dict(test_loss=test_loss, test_acc=test_acc, test_skipped=test_skipped))
    if topology.is_main:
        models.save_artifact(env.model_dir, _unwrap(model), card)
        if args.serving_formats and images[0] is not None:
            # faster copies for CPU serving (OpenVINO float32 and int8), checked on the validation set
            export.export_serving_formats(env.model_dir, _unwrap(model), card,
                                          calibration=export.with_transform(images[0], eval_tf), validation=images[1])
        elif args.serving_formats:
            log.warning("no images in this job (features channel only): the artifact has no OpenVINO formats")
        (env.output_data_dir / "metrics.json").write_text(json.dumps(state.history, indent=2) + "\n")
        log.info("model artifact written to %s", env.model_dir)
    callbacks.on_train_end(state.history)
    return 0


def state_exists(env: TrainingEnvironment) -> bool:
    """A checkpoint to resume from: its head was probed already."""
    return (env.checkpoint_dir / CHECKPOINT_FILE).is_file()


def default_workers(topology: distributed.Topology) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, distributed.processes_per_host()))


# ---------------------------------------------------------------------------------------------
# entry point


def _worker(local_rank: int, args, env, failure_file: Path) -> None:
    """A spawned per-GPU process: its own failure boundary, then its exit code."""
    code = run_job(lambda: main(args, env, local_rank, callbacks=debug.callbacks(args, env)), failure_file)
    if code:
        sys.exit(code)


def run(env: TrainingEnvironment, argv: list[str] | None = None) -> int:
    args = parse_hyperparameters(env.hyperparameters, argv)
    nproc, dist_env = distributed.plan(env.hosts, env.current_host, env.network_interface)
    os.environ.update(dist_env)
    if nproc == 1:
        return main(args, env, callbacks=debug.callbacks(args, env))
    # one process per GPU; docker stop signals only us, so pass SIGTERM on for them to checkpoint
    ctx = torch.multiprocessing.start_processes(
        _worker, args=(args, env, env.failure_file), nprocs=nproc, join=False, start_method="spawn")
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in ctx.processes if p.is_alive()])
    try:
        while not ctx.join():
            pass
    except torch.multiprocessing.ProcessExitedException as e:
        return e.exit_code or 1
    return 0


def cli(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    env = TrainingEnvironment.from_env()
    env.failure_file.unlink(missing_ok=True)  # a reason left by an earlier run on this machine
    sys.exit(run_job(lambda: run(env, sys.argv[1:] if argv is None else argv), env.failure_file))


if __name__ == "__main__":
    cli()
