"""Data sets in ImageFolder layout (one folder per class) and their loaders.

An unreadable or corrupt image is skipped: the dataset yields None for it, the collate function
drops it and counts it, and training logs the count per epoch instead of dying on one bad file.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torch.utils.data.dataloader import default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from ..artifact.images import load_rgb
from ..names import UserError

log = logging.getLogger(__name__)

# What PIL raises for a file that isn't a readable image (truncated, corrupt, bomb, not an image)
UNREADABLE = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def find_classes(root: Path) -> list[str]:
    """The sorted class folder names of a training channel; the model's output order."""
    classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"no class folders in {root}: expected one folder of images per class")
    if len(classes) < 2:
        raise UserError(f"only one class ({classes[0]}) in {root}: a classifier needs at least two")
    return classes


class ImageFolderDataset(Dataset):
    """torchvision's ImageFolder with a fixed class list, reduced-size JPEG decoding and skipping."""

    def __init__(self, root: Path, classes: Sequence[str], transform: Callable | None = None):
        self.root = Path(root)
        present = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise UserError(f"{root} has class folders that training does not: {', '.join(unknown[:10])}")
        class_to_idx = {c: i for i, c in enumerate(classes) if c in present}
        self.samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not self.samples:
            raise UserError(f"no images in {root} (extensions: {', '.join(IMG_EXTENSIONS)})")
        self.targets = [t for _, t in self.samples]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        path, _ = self.samples[index]
        with Image.open(path) as img:
            return load_rgb(img, getattr(self.transform, "decode_min_side", 0))

    def __getitem__(self, index: int):
        try:
            img = self.load(index)
        except UNREADABLE as e:
            log.warning("skipping unreadable image %s: %s", self.samples[index][0], e)
            return None
        return (self.transform(img) if self.transform else img), self.targets[index]


def collate_skipping_unreadable(batch):
    """(images, targets, number of unreadable images dropped from this batch)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(good)
    return images, targets, skipped


class ShardSampler(Sampler[int]):
    """Every `world_size`-th index from `rank`: each sample evaluated exactly once across ranks."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = range(rank, length, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the loader's sampler, or its shard dataset (shard_dataset.py), which epoch starts."""
    target = loader.dataset if hasattr(loader.dataset, "set_epoch") else loader.sampler
    target.set_epoch(epoch)


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded (train, validation) split of range(n), validation the given fraction."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_valid = max(1, round(n * fraction))
    return sorted(order[n_valid:]), sorted(order[:n_valid])


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    sampler: Sampler | None = None,
    shuffle: bool = False,
    drop_last: bool = False,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skipping_unreadable,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def subset(dataset: Dataset, indices: Sequence[int] | None) -> Dataset:
    return dataset if indices is None else Subset(dataset, list(indices))
