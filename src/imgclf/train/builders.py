"""The training job's parts, each built by one function, in the order job.py reads them:
transforms, data (images or cached backbone features), model and its precision, the linear probe
of `lp-ft`, learner (engine.Learner: optimizer, loss, scaler, EMA), distributed wrapping, loaders,
lr schedule.
What the recipe (recipe.py) chose arrives as resolved hyperparameters."""
from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from ..artifact.card import ModelCard
from ..artifact.images import EvalSettings
from ..artifact.network import create_model, head
from ..callbacks import Callbacks
from ..names import UserError, cpu_count
from . import distributed, features, linear_probe, optim, precision, shard_dataset
from .backbone import find_imagenet_weights, freeze_backbone, load_backbone, normalisation
from .checkpoint import CHECKPOINT_FILE
from .contract import TrainingEnvironment
from .data import ImageFolderDataset, ShardSampler, find_classes, make_loader, split_indices, subset
from .ema import WeightsEma
from .engine import Learner, unwrap
from .presets import ClassificationPresetEval, ClassificationPresetTrain
from .shards import is_shard_folder

log = logging.getLogger("imgclf.train")


@dataclass
class Job:
    """What every part of one training process shares."""

    args: argparse.Namespace
    env: TrainingEnvironment
    topology: distributed.Topology
    device: torch.device
    callbacks: Callbacks
    num_workers: int


@dataclass(frozen=True)
class Transforms:
    train: Callable
    eval: Callable
    eval_settings: EvalSettings  # stored in model.json: serving preprocesses as evaluation did


@dataclass
class Splits:
    """The job's data: images, or cached backbone features (then the loop trains only the head)."""

    classes: list[str]
    train: Dataset | None
    valid: Dataset | None
    test: Dataset | None = None

    def __iter__(self):
        return iter((self.train, self.valid, self.test))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def uses_features(args) -> bool:
    return args.features or args.extract_features


def build_transforms(args) -> Transforms:
    mean, std = normalisation(args.arch)
    eval_settings = EvalSettings.for_image_size(args.image_size, mean=mean, std=std, crop_ratio=args.eval_crop_ratio)
    eval_tf = ClassificationPresetEval.from_settings(eval_settings)
    train_tf = (ClassificationPresetTrain(crop_size=args.image_size, mean=mean, std=std, crop_scale=args.crop_scale,
                                          auto_augment=args.auto_augment, random_erase=args.random_erase)
                if args.augment and not uses_features(args) else eval_tf)
    return Transforms(train_tf, eval_tf, eval_settings)


def build_datasets(env: TrainingEnvironment, args, transforms: Transforms) -> Splits:
    """Image datasets from the channels; without a validation channel, part of training is held out."""
    if "training" not in env.channels:
        raise UserError("no training channel: give images in class folders as the 'training' channel")
    root = env.channels["training"]
    if is_shard_folder(root):  # WebDataset shards (shards.py)
        return Splits(*shard_dataset.open_splits(env.channels, args, transforms.train, transforms.eval))
    classes = find_classes(root)
    train_ds = ImageFolderDataset(root, classes, transforms.train)
    if "validation" in env.channels:
        valid_ds = ImageFolderDataset(env.channels["validation"], classes, transforms.eval)
    else:
        train_idx, valid_idx = split_indices(len(train_ds), args.valid_split, args.seed)
        log.info("no validation channel: holding out %d of %d training images", len(valid_idx), len(train_ds))
        valid_ds = subset(ImageFolderDataset(root, classes, transforms.eval), valid_idx)
        train_ds = subset(train_ds, train_idx)
    test_ds = ImageFolderDataset(env.channels["test"], classes, transforms.eval) if "test" in env.channels else None
    return Splits(classes, train_ds, valid_ds, test_ds)


def open_features_channel(job: Job) -> features.FeatureSet | None:
    """The features channel's cached features, when the job trains on them."""
    args, env = job.args, job.env
    if not uses_features(args):
        return None
    features.check_job(args, job.topology.distributed)
    if args.features and "features" in env.channels:
        return features.open_channel(env.channels["features"], env.cache_dir / "features")
    return None


def build_splits(job: Job, transforms: Transforms, channel_set: features.FeatureSet | None) -> Splits:
    if channel_set is not None and "training" not in job.env.channels:  # the features alone are enough
        return Splits(channel_set.classes, None, None)
    return build_datasets(job.env, job.args, transforms)


def build_model(args, classes, env: TrainingEnvironment, device) -> nn.Module:
    model = create_model(args.arch, len(classes))
    if args.pretrained:
        weights = find_imagenet_weights(args.arch, env.channels.get("pretrained"))
        if weights is None:
            raise UserError(
                f"no ImageNet weights for {args.arch}: add a 'pretrained' channel with {args.arch}.pth "
                f"(a torchvision state_dict), build the image with --build-arg PRETRAINED_ARCHS={args.arch}, "
                "or set pretrained=false to train from scratch"
            )
        load_backbone(model, weights)
    if args.freeze:
        freeze_backbone(model)
    return model.to(device, memory_format=precision.memory_format(args.amp))  # precision.choose settles it


def choose_precision(job: Job, model: nn.Module) -> bool:
    """Whether this machine runs `amp`'s mixed precision and channels_last (precision.choose: a timed
    probe on CPUs with bfloat16); leaves `model` in that layout."""
    args = job.args
    # on cached features the loop runs only the head: no probe of the network (seconds a tuning
    # trial would pay for nothing), and features stay float32 on every CPU, as their cache key assumes
    requested = args.amp and not (uses_features(args) and job.device.type == "cpu")
    use = precision.choose(model, job.device, requested=requested, image_size=args.image_size,
                           batch_size=args.batch_size)
    if job.topology.distributed:
        # DDP needs one memory layout on every rank, and each rank timed its own probe: bfloat16 and
        # channels_last only where every rank chose them
        everywhere = not distributed.any_rank(not use, job.topology, job.device)
        if use and not everywhere:
            log.info("precision: float32, as another rank's probe chose")
            model.to(memory_format=precision.memory_format(False))
        use = everywhere
    return use


def probe_head(job: Job, model: nn.Module, card: ModelCard, transforms: Transforms, mixed: bool) -> None:
    """lp-ft's linear probe: fit the head on cached backbone features of the training and validation
    images (never the test set) before fine-tuning. Skipped where it cannot help or has run."""
    args, env = job.args, job.env
    if not args.lp_steps or uses_features(args) or (env.checkpoint_dir / CHECKPOINT_FILE).is_file():
        return  # no probe asked, the head trains on features anyway, or a resumed job probed already
    if not args.pretrained or job.topology.distributed:
        log.info("linear probe skipped: %s", "no pretrained backbone to probe" if not args.pretrained
                 else "it runs in one process; the fine-tuning starts from the new head")
        return
    eval_only = Transforms(transforms.eval, transforms.eval, transforms.eval_settings)
    images = build_datasets(env, args, eval_only)
    linear_probe.run(args, env, model, card, (images.train, images.valid, None), job.num_workers, job.device,
                     lambda: precision.autocast(job.device, mixed))


def feature_splits(job: Job, model: nn.Module, card: ModelCard, images: Splits,
                   channel_set: features.FeatureSet | None, mixed: bool) -> features.FeatureSet:
    """Each split's backbone features: read from the cache or channel, else computed once."""
    device = job.device
    return features.for_job(job.args, job.env, model, card, channel_set, tuple(images), job.num_workers, device,
                            lambda: precision.autocast(device, mixed))


def build_learner(job: Job, model: nn.Module, trains_head_only: bool, mixed: bool) -> Learner:
    """What the loop runs and updates, in the precision `choose_precision` settled (`mixed`)."""
    args, device = job.args, job.device
    optimizer = optim.build_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler(device, mixed))
    net = head(model) if trains_head_only else model
    return Learner(model, net, nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), optimizer, scaler,
                   device, job.topology, job.callbacks, mixed=mixed, freeze_bn_stats=args.freeze_bn_stats,
                   log_interval=args.log_interval, ema=WeightsEma(net, args.ema_decay) if args.ema_decay else None)


def build_schedule(job: Job, learner: Learner, loaders: dict) -> None:
    """The lr of every step (optim.py): warmup, then constant or cosine over the job's epochs."""
    args = job.args
    learner.schedule = optim.Schedule(learner.optimizer, epochs=args.epochs, steps_per_epoch=len(loaders["train"]),
                                      warmup_epochs=args.warmup_epochs, schedule=args.lr_schedule)


def keep_best(learner: Learner, valid: tuple[float, float], ema_valid: tuple[float, float], epoch: int) -> None:
    """Offer this epoch's network and EMA, each with its validation (loss, accuracy), to `learner.best`."""
    learner.best.offer(unwrap(learner.net), valid[1], valid[0], f"epoch {epoch}")
    learner.best.offer(learner.ema.module, ema_valid[1], ema_valid[0], f"epoch {epoch} EMA")


def restore_best(job: Job, learner: Learner) -> None:
    """Put the best weights offered (if any) into the network, for the test pass and the artifact."""
    if learner.best.state is not None:
        learner.best.restore(unwrap(learner.net))
        if job.topology.is_main:
            log.info("keeping the weights of %s (best valid_acc %.4f)", learner.best.label, learner.best.score[0])


def wrap_distributed(job: Job, learner: Learner) -> None:
    """DistributedDataParallel around what the loop runs; `learner.model` stays the plain network."""
    if job.topology.distributed:
        device = job.device
        learner.net = nn.parallel.DistributedDataParallel(
            learner.net, device_ids=[device.index] if device.type == "cuda" else None)


def build_loaders(job: Job, splits: Splits) -> dict:
    """The training loader and an evaluation loader per split present."""
    args, topology = job.args, job.topology
    pin = job.device.type == "cuda"
    if isinstance(splits.train, IterableDataset):  # shards: the dataset deals, shuffles and pads per rank
        loaders = {"train": make_loader(splits.train, batch_size=args.batch_size, num_workers=job.num_workers,
                                        drop_last=len(splits.train) > args.batch_size, pin_memory=pin)}
        return _eval_loaders(job, splits, loaders)
    # the epoch's order from (seed, epoch) alone, whatever the loader's workers draw: images or cached
    # features are then seen in the same order, and a resumed epoch repeats the interrupted one's
    sampler = torch.utils.data.DistributedSampler(splits.train, topology.world_size, topology.rank, seed=args.seed)
    loaders = {"train": make_loader(
        splits.train, batch_size=args.batch_size, num_workers=job.num_workers, sampler=sampler, shuffle=True,
        drop_last=len(splits.train) > args.batch_size * topology.world_size, pin_memory=pin, seed=args.seed)}
    return _eval_loaders(job, splits, loaders)


def _eval_loaders(job: Job, splits: Splits, loaders: dict) -> dict:
    topology = job.topology
    for split, ds in (("valid", splits.valid), ("test", splits.test)):
        if ds is not None:
            shard = (ShardSampler(len(ds), topology.rank, topology.world_size)
                     if topology.distributed and not isinstance(ds, IterableDataset) else None)
            loaders[split] = make_loader(ds, batch_size=job.args.batch_size, num_workers=job.num_workers,
                                         sampler=shard, pin_memory=job.device.type == "cuda")
    return loaders


def default_workers(topology: distributed.Topology) -> int:
    """Loader workers per process: this host's CPUs shared by the job's processes on it."""
    return max(1, cpu_count() // topology.local_world_size)
