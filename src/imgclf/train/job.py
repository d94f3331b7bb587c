"""Transfer-learning training job: the program that `docker run IMAGE train` runs by default.

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
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import debug, tracking
from ..artifact import export
from ..artifact.card import ModelCard
from ..artifact.network import save_artifact
from ..callbacks import Callback, Callbacks, TrainingJob
from ..names import LOG_FORMAT, UserError
from . import distributed, evaluation, features, hyperparameters
from .builders import (
    Job,
    Splits,
    build_learner,
    build_loaders,
    build_model,
    build_schedule,
    build_splits,
    build_transforms,
    choose_precision,
    default_workers,
    feature_splits,
    keep_best,
    open_features_channel,
    probe_head,
    restore_best,
    seed_everything,
    uses_features,
    wrap_distributed,
)
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .contract import TrainingEnvironment, failure_reason, run_job
from .data import set_epoch
from .engine import SIGTERM_EXIT, Learner, StopRequest, TrainState, evaluate, train_one_epoch
from .metrics import format_metrics

log = logging.getLogger("imgclf.train")


def get_args_parser() -> argparse.ArgumentParser:
    """The job's flags, one per entry of the hyperparameter table (hyperparameters.py)."""
    return hyperparameters.get_args_parser(__doc__.splitlines()[0])


def parse_hyperparameters(raw: dict[str, str], argv: list[str] | None = None) -> argparse.Namespace:
    """Typed arguments from SageMaker's string hyperparameters, then command-line overrides."""
    return hyperparameters.parse(raw, argv, get_args_parser())


# ---------------------------------------------------------------------------------------------
# the job


def main(args: argparse.Namespace, env: TrainingEnvironment, callbacks: Sequence[Callback] = (), *,
         head_only: bool = False) -> int:
    """Train as `args` say; `callbacks` watch the loop (callbacks.py) and hear how it ended.
    Under torchrun, each process joins the process group that torchrun describes. `head_only` (the
    local tuner's trials on a features channel): build the head alone and write only it, without
    the evaluation report, for features.complete_artifact to turn into the whole network's artifact
    if it is kept."""
    topology = distributed.init()
    observers = Callbacks(callbacks)
    try:
        code = _train(args, env, topology, observers, head_only)
    except BaseException as e:
        observers.on_train_abort(failure_reason(e))
        raise
    finally:
        distributed.cleanup(topology)
    if code == SIGTERM_EXIT:
        observers.on_train_abort("stopped by SIGTERM; the checkpoint resumes the job")
    return code


def _train(args, env: TrainingEnvironment, topology: distributed.Topology, callbacks: Callbacks,
           head_only: bool) -> int:
    device = torch.device(f"cuda:{topology.local_rank}" if torch.cuda.is_available() else "cpu")
    stop = StopRequest.for_device(device)
    stop.install()
    job = Job(args, env, topology, device, callbacks,
              args.num_workers if args.num_workers is not None else default_workers(topology))
    seed_everything(args.seed + topology.rank)

    transforms = build_transforms(args)
    channel_set = open_features_channel(job)
    images = build_splits(job, transforms, channel_set)
    card = ModelCard(arch=args.arch, classes=tuple(images.classes), eval=transforms.eval_settings)
    model = features.head_alone(channel_set, device) if head_only else build_model(args, images.classes, env, device)
    mixed = choose_precision(job, model)
    probe_head(job, model, card, transforms, mixed)
    splits = images
    if uses_features(args):
        feature_set = feature_splits(job, model, card, images, channel_set, mixed)
        if args.extract_features:
            log.info("features of %s written to %s", ", ".join(feature_set.splits), feature_set.path)
            return 0
        splits = Splits(images.classes, *(feature_set.dataset(s) if s in feature_set.splits else None
                                          for s in features.SPLITS))
        job.num_workers = 0  # features are in memory
    if topology.is_main:
        log_splits(splits, cached=uses_features(args))

    learner = build_learner(job, model, trains_head_only=uses_features(args), mixed=mixed)
    checkpoint = env.checkpoint_dir / CHECKPOINT_FILE
    resumed = args.checkpoint and load_checkpoint(checkpoint, model, learner.optimizer, learner.scaler, card)
    state = TrainState(**(resumed or {}))
    if state.epoch and topology.is_main:
        log.info("resumed from %s after epoch %d", checkpoint, state.epoch)
    callbacks.on_train_begin(TrainingJob(model, learner.criterion, learner.optimizer, args, env, topology, device))
    wrap_distributed(job, learner)
    loaders = build_loaders(job, splits)
    build_schedule(job, learner, loaders)
    if topology.is_main:
        env.output_data_dir.mkdir(parents=True, exist_ok=True)
        ran = {**vars(args), "amp": mixed}  # amp as this machine runs it
        (env.output_data_dir / "args.json").write_text(json.dumps(ran, indent=2) + "\n")

    def save() -> None:
        if args.checkpoint:
            save_checkpoint(checkpoint, model, learner.optimizer, learner.scaler, state, card)

    if not fit(job, learner, loaders, state, stop, save):
        return SIGTERM_EXIT
    restore_best(job, learner)
    test_batches = evaluate_test_channel(job, learner, loaders, state)
    if topology.is_main:
        write_artifact(job, model, card, images, transforms.eval)
        (env.output_data_dir / "metrics.json").write_text(json.dumps(state.history, indent=2) + "\n")
    if not head_only:  # the report belongs to an artifact; a head alone is not one yet
        evaluation.run(job, learner, loaders, images.classes, images.train, test_batches)
    callbacks.on_train_end(state.history)
    return 0


def evaluate_test_channel(job: Job, learner: Learner, loaders: dict, state: TrainState) -> list:
    """The test channel's loss and accuracy, logged and kept in the history; returns its answers
    (for evaluation.json), none without a test channel."""
    batches: list = []
    if "test" in loaders:
        loss, acc, skipped = evaluate_split(job, learner, "test", loaders["test"], batches)
        if job.topology.is_main:
            log.info(format_metrics(test_loss=loss, test_acc=acc))
            state.history.append(dict(test_loss=loss, test_acc=acc, test_skipped=skipped))
    return batches


def log_splits(splits: Splits, cached: bool) -> None:
    log.info("%d classes, %d training and %d validation images%s%s", len(splits.classes), len(splits.train),
             len(splits.valid), f", {len(splits.test)} test images" if splits.test else "",
             " (cached features)" if cached else "")


def evaluate_split(job: Job, learner: Learner, split: str, loader,
                   keep: list | None = None) -> tuple[float, float, int]:
    job.callbacks.on_evaluate_begin(split)
    loss, acc, skipped = evaluate(learner, loader, keep=keep)
    job.callbacks.on_evaluate_end(split, {f"{split}_loss": loss, f"{split}_acc": acc})
    return loss, acc, skipped


def fit(job: Job, learner: Learner, loaders: dict, state: TrainState, stop: StopRequest,
        save: Callable[[], None]) -> bool:
    """Epochs until `args.epochs` (or early stopping); False when SIGTERM stopped it (checkpoint saved)."""
    args, topology, device, callbacks = job.args, job.topology, job.device, job.callbacks
    while state.epoch < args.epochs:
        epoch = state.epoch + 1
        set_epoch(loaders["train"], epoch)
        callbacks.on_epoch_begin(epoch)
        start = time.perf_counter()
        tally, interrupted = train_one_epoch(learner, loaders["train"], epoch, stop)
        if interrupted:
            if topology.is_main:
                save()
                log.warning("stopped by SIGTERM in epoch %d; the checkpoint resumes it", epoch)
            return False
        loss_sum, correct, seen, skipped = tally.totals(topology, device)
        if seen == 0:
            raise UserError("no readable training images")
        elapsed = time.perf_counter() - start
        valid_loss, valid_acc, valid_skipped = evaluate_split(job, learner, "valid", loaders["valid"])
        ema_metrics = validate_ema(job, learner, loaders["valid"], (valid_loss, valid_acc), epoch)
        state.end_epoch(valid_loss)
        metrics = dict(epoch=epoch, train_loss=loss_sum / seen, train_acc=correct / seen, valid_loss=valid_loss,
                       valid_acc=valid_acc, **ema_metrics, lr=learner.optimizer.param_groups[0]["lr"],
                       images_per_sec=seen / elapsed)
        state.history.append(metrics)
        if topology.is_main:
            log.info(format_metrics(**metrics))
            if skipped or valid_skipped:
                log.warning("epoch=%d skipped unreadable images: %d training, %d validation",
                            epoch, skipped, valid_skipped)
            save()
        callbacks.on_epoch_end(epoch, metrics)
        if state.should_stop_early(args.early_stopping_patience):
            if topology.is_main:
                log.info("early stopping: valid_loss has not improved for %d epochs", args.early_stopping_patience)
            break
    return True


def validate_ema(job: Job, learner: Learner, loader, valid: tuple[float, float], epoch: int) -> dict:
    """The EMA's validation metrics ({} without an EMA); the better of it and the network is kept."""
    if learner.ema is None:
        return {}
    loss, acc, _ = evaluate(learner, loader, learner.ema.module)
    keep_best(learner, valid, (loss, acc), epoch)
    return dict(ema_valid_loss=loss, ema_valid_acc=acc)


def write_artifact(job: Job, model: nn.Module, card: ModelCard, images: Splits, eval_tf) -> None:
    """model.pt and model.json, then the faster copies for CPU serving (OpenVINO float32 and int8),
    calibrated on training images and checked on the validation set. A head alone: its weights and model.json."""
    if isinstance(model, features.HeadAlone):
        features.save_head(job.env.model_dir, model, card)
        log.info("head written to %s", job.env.model_dir)
        return
    save_artifact(job.env.model_dir, model, card)
    if job.args.serving_formats and images.train is not None:
        export.export_serving_formats(job.env.model_dir, model, card,
                                      calibration=export.with_transform(images.train, eval_tf),
                                      validation=images.valid)
    elif job.args.serving_formats:
        log.warning("no images in this job (features channel only): the artifact has no OpenVINO formats")
    log.info("model artifact written to %s", job.env.model_dir)


# ---------------------------------------------------------------------------------------------
# entry point


def run(env: TrainingEnvironment, argv: list[str] | None = None) -> int:
    """One process of the job: all of it, or one rank of those that torchrun started (imgclf.train.toolkit)."""
    args = parse_hyperparameters(env.hyperparameters, argv)
    return main(args, env, callbacks=tracking.with_tracking(debug.callbacks(args, env), args, env))


def cli(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format=LOG_FORMAT)
    env = TrainingEnvironment.from_env()
    if "RANK" not in os.environ:  # under torchrun, the launcher cleared it before any rank could fail
        env.failure_file.unlink(missing_ok=True)  # a reason left by an earlier run on this machine
    sys.exit(run_job(lambda: run(env, sys.argv[1:] if argv is None else argv), env.failure_file))


if __name__ == "__main__":
    cli()
