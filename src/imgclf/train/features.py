"""The feature cache: with a frozen backbone, each image's backbone features are computed once.

A frozen backbone runs as in evaluation (model.train_mode), so an image's features (the head's
input) never change between epochs or tuning trials: only the head learns. A feature set holds
them for the training, validation and test splits, computed with the evaluation transform (no
random crops or flips), in a safe format: one `.npy` array per split and kind (read with
`allow_pickle=False`) and `manifest.json`:

    {"format_version", "key", "identity": {arch, weights sha256, eval transform, classes, holdout},
     "data": {split: [[relative path, size, mtime_ns], ...]}, "splits": {split: {count, dim, skipped}}}

`key` hashes identity and data (files, sizes, times): a job with the same key reuses the set.
A `features` channel (what `extract-features` jobs write, also as their model.tar.gz) is checked
against the job's identity, and against its image channels' names and sizes when it has them
(a copy to another machine changes the times, not the data).

A job on a features channel can also build and train the head alone (`HeadAlone`, the local
tuner's trials): it writes the head's weights and the card, and `complete_artifact` later makes
the whole network's artifact of the one kept, with the backbone weights the features came from.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from ..artifact.archive import UnsafeArchive, safe_extract
from ..artifact.card import load_card, write_card
from ..artifact.network import create_model, head, save_artifact
from ..names import UserError
from .backbone import find_imagenet_weights, load_backbone
from .contract import TrainingEnvironment
from .data import make_loader

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
HEAD_FILE = "head.pt"  # a head-alone job's weights: the head's state_dict, beside model.json


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def data_identity(dataset) -> list[list]:
    """[relative path, size, mtime_ns] of every image of a dataset (an ImageFolderDataset or a Subset of one),
    or of every shard file of a ShardDataset."""
    if hasattr(dataset, "data_identity"):
        return dataset.data_identity()
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    samples = dataset.samples if indices is None else [dataset.samples[i] for i in indices]
    rows = []
    for path, _ in samples:
        st = os.stat(path)
        rows.append([os.path.relpath(path, dataset.root), st.st_size, st.st_mtime_ns])
    return rows


def cache_key(identity: dict, data: dict) -> str:
    blob = json.dumps({"identity": identity, "data": data}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@torch.inference_mode()
def extract(model: nn.Module, head: nn.Module, loader, device, autocast: Callable) -> tuple[np.ndarray, np.ndarray, int]:
    """(features, targets, unreadable images skipped): the head's input for every image of `loader`;
    `autocast()` gives the precision context the job runs the network in."""
    captured = []
    hook = head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].float().cpu()))
    model.eval()
    targets, skipped = [], 0
    try:
        for images, batch_targets, n_skipped in loader:
            skipped += n_skipped
            if len(batch_targets):
                with autocast():
                    model(images.to(device))
                targets.append(batch_targets)
    finally:
        hook.remove()
    if not captured:
        return np.zeros((0, head.in_features), np.float32), np.zeros(0, np.int64), skipped
    return torch.cat(captured).numpy(), torch.cat(targets).numpy().astype(np.int64), skipped


@dataclass
class FeatureSet:
    """A feature set on disk: its manifest, and its arrays loaded on demand."""

    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["identity"]["classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def dim(self) -> int:
        """The length of a feature: the head's input."""
        return next(iter(self.manifest["splits"].values()))["dim"]

    def dataset(self, split: str) -> TensorDataset:
        x = np.load(self.path / f"{split}.features.npy", allow_pickle=False)
        y = np.load(self.path / f"{split}.targets.npy", allow_pickle=False)
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    def check(self, identity: dict, data: dict) -> None:
        """Refuse a set made for another network, transform, class list or data."""
        theirs = self.manifest["identity"]
        wrong = [k for k in identity if theirs.get(k) != identity[k]]
        if wrong:
            detail = ", ".join(f"{k}: set {theirs.get(k)!r}, job {identity[k]!r}" for k in wrong)
            raise UserError(f"the features in {self.path} were computed for another job ({detail[:400]}): "
                            "compute them again for this one, or leave out the features channel")
        for split, rows in data.items():
            mine = [r[:2] for r in rows]
            stored = [r[:2] for r in self.manifest["data"].get(split, [])]
            if mine != stored:
                raise UserError(f"the features in {self.path} were computed from other {split} images "
                                f"({len(stored)} files, this job has {len(mine)}): compute them again")


def load(path: Path) -> FeatureSet | None:
    manifest_file = Path(path) / MANIFEST
    if not manifest_file.is_file():
        return None
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{manifest_file}: feature set format {manifest.get('format_version')!r}, "
                        f"expected {FORMAT_VERSION}")
    return FeatureSet(Path(path), manifest)


def save(path: Path, identity: dict, data: dict, arrays: dict[str, tuple[np.ndarray, np.ndarray, int]]) -> FeatureSet:
    """Write a set into `path` (arrays first, the manifest last: a set without one is incomplete)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)
    splits = {}
    for split, (x, y, skipped) in arrays.items():
        for kind, a in (("features", x), ("targets", y)):
            tmp = path / f"{split}.{kind}.tmp.npy"
            np.save(tmp, a, allow_pickle=False)
            os.replace(tmp, path / f"{split}.{kind}.npy")
        splits[split] = {"count": int(len(y)), "dim": int(x.shape[1]), "skipped": int(skipped)}
    manifest = {"format_version": FORMAT_VERSION, "key": cache_key(identity, data), "identity": identity,
                "data": data, "splits": splits}
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest) + "\n")
    os.replace(tmp, path / MANIFEST)
    return FeatureSet(path, manifest)


def open_channel(channel: Path, scratch: Path) -> FeatureSet:
    """The feature set of a `features` channel: its folder, a subfolder, or a model.tar.gz holding it
    (what an extract-features job leaves on S3), unpacked into `scratch`."""
    channel = Path(channel)
    found = load(channel)
    if found:
        return found
    sets = sorted(p.parent for p in channel.glob(f"*/{MANIFEST}"))
    if len(sets) == 1:
        return load(sets[0])
    archives = sorted(channel.glob("*.tar.gz"))
    if not sets and len(archives) == 1:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            safe_extract(archives[0], scratch)
        except UnsafeArchive as e:
            raise UserError(f"the features channel's {archives[0].name}: {e}") from None
        found = load(scratch)
        if found:
            return found
    raise UserError(f"the features channel {channel} holds no feature set: give the folder or model.tar.gz "
                    "that an extract-features job wrote (it has manifest.json)")


def ensure(path: Path, identity: dict, data: dict, compute: Callable[[], dict]) -> FeatureSet:
    """The set at `path` when its key matches; else `compute()` the arrays and write them there."""
    key = cache_key(identity, data)
    found = load(path)
    if found and found.key == key:
        log.info("features: reusing %s (key %s)", path, key)
        return found
    log.info("features: computing backbone features into %s (key %s)", path, key)
    return save(path, identity, data, compute())


# ---------------------------------------------------------------------------------------------
# in a training job


def check_job(args, distributed: bool) -> None:
    if not (args.pretrained and args.freeze):
        raise UserError("features and extract-features need a frozen pretrained backbone (recipe=linear or "
                        "freeze=true, pretrained=true): a backbone that learns has no fixed features")
    if distributed:
        raise UserError("features and extract-features run in one process: use one instance without several GPUs")


def for_job(args, env: TrainingEnvironment, model: nn.Module, card, channel_set: FeatureSet | None,
            image_datasets, num_workers: int, device, autocast: Callable) -> FeatureSet:
    """The backbone features of every split of a job: the features channel's, after checking it fits
    the job; else those in the cache dir (the warm pool's, else the checkpoint dir; for extract-features,
    the model dir) when their key matches; else computed now and written there. `image_datasets` are
    (train, valid, test), None where the job has no such images."""
    identity = json.loads(json.dumps(dict(  # through JSON, as the manifest keeps it
        arch=args.arch, eval=card.eval.to_dict(), classes=list(card.classes),
        holdout=None if "validation" in env.channels else [args.valid_split, args.seed])))
    if not isinstance(model, HeadAlone):  # a head alone meets its backbone in complete_artifact, checked there
        identity["weights_sha256"] = file_digest(find_imagenet_weights(args.arch, env.channels.get("pretrained")))
    named = {split: ds for split, ds in zip(SPLITS, image_datasets) if ds is not None}
    data = {split: data_identity(ds) for split, ds in named.items()}
    if env.warm_pool_dir:  # each job on a warm pool downloads its channels afresh: new times, the same files
        data = {split: [row[:2] for row in rows] for split, rows in data.items()}
    if channel_set is not None:
        if not named:  # no image channels: how the images were split is the set's own business
            identity.pop("holdout")
        channel_set.check(identity, data)
        return channel_set

    def compute():
        classifier = head(model)
        return {split: extract(model, classifier, make_loader(ds, batch_size=args.batch_size, num_workers=num_workers),
                               device, autocast)
                for split, ds in named.items()}

    where = env.model_dir if args.extract_features else env.cache_dir / "features"
    return ensure(where, identity, data, compute)


# ---------------------------------------------------------------------------------------------
# the head alone


class HeadAlone(nn.Module):
    """A new head without its network, where `head()` looks for one (`fc`): what a job on a features
    channel trains when it leaves the whole network to `complete_artifact`. Every arch's head is an
    nn.Linear with torch's default initialisation, as this one is."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)


def head_alone(channel_set: FeatureSet | None, device) -> HeadAlone:
    if channel_set is None:
        raise UserError("training the head alone needs a features channel")
    return HeadAlone(channel_set.dim, len(channel_set.classes)).to(device)


def save_head(model_dir: Path, model: nn.Module, card) -> None:
    """A head-alone job's model dir: the head's weights and the card; no model.pt yet."""
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in head(model).state_dict().items()}, model_dir / HEAD_FILE)
    write_card(model_dir, card)


def complete_artifact(model_dir: Path, feature_set: FeatureSet, pretrained_channel: Path | None,
                      job: TrainingEnvironment | None = None) -> None:
    """The whole network's artifact in a head-alone job's model dir: the backbone with the ImageNet
    weights that `feature_set` was computed with, the head as trained (head.pt, then removed); given
    the head-alone `job` with its image channels, the evaluation files a training job writes too."""
    card = load_card(model_dir)
    weights = find_imagenet_weights(card.arch, pretrained_channel)
    if weights is None or file_digest(weights) != feature_set.manifest["identity"]["weights_sha256"]:
        raise UserError(f"the ImageNet weights of {card.arch} here ({weights}) are not those the features in "
                        f"{feature_set.path} were computed with: compute the features again")
    model = create_model(card.arch, len(card.classes))
    load_backbone(model, weights)
    head(model).load_state_dict(torch.load(model_dir / HEAD_FILE, map_location="cpu", weights_only=True))
    save_artifact(model_dir, model, card)
    if job is not None:
        from . import evaluation  # builds datasets as a job does: builders.py imports this module

        evaluation.run_on_network(model, card, job)
    (model_dir / HEAD_FILE).unlink()
