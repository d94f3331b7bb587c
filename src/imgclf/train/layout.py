"""A data set's layout: `train/`, optionally `valid/` and `test/`, each one folder of images per
class (torchvision's ImageFolder), as dogImages.zip unpacks, or the WebDataset shards that `imgclf data
pack` made of them (shards.py); folders already named after the
training job's channels (`training/`, `validation/`) are taken as they are.

Read by the launcher (`imgclf data check`, `--data`) and the local tuner; imports neither torch
nor the SageMaker SDK.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..names import UserError
from . import shards

# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS), written out so
# that the launcher does not import torch
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# split folder name -> channel, in the order they are looked for
SPLIT_CHANNELS = {"train": "training", "training": "training", "valid": "validation",
                  "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class Split:
    name: str
    classes: tuple[str, ...]
    images: int


def check_layout(root: Path) -> dict[str, Split]:
    """Every split's classes and image count; a UserError listing every problem found.

    train/ must have at least two class folders, each with images; valid/ and test/ may hold only
    classes that train/ has, since the model predicts the training classes only.
    """
    root = Path(root)
    problems, splits = [], {}
    present = [name for name in SPLIT_CHANNELS if (root / name).is_dir()]
    by_channel = {}
    for name in present:
        by_channel.setdefault(SPLIT_CHANNELS[name], []).append(name)
    twice = [" and ".join(f"{n}/" for n in names) for names in by_channel.values() if len(names) > 1]
    if twice:
        raise UserError(f"{root}: {'; '.join(twice)} would be the same channel: keep one")
    if "training" not in by_channel:
        raise UserError(f"no train/ folder in {root}: expected train/, valid/, test/ with one folder per class")
    for name in present:
        folder = root / name
        index = shards.read_index(folder)
        if index is not None:  # packed by `imgclf data pack`
            splits[name] = Split(name, index.classes, sum(index.shards.values()))
            continue
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        counts = {c: _count_images(folder / c) for c in classes}
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            problems.append(f"{name}/ has class folders without images: {', '.join(empty[:5])}")
        loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
        if loose:
            problems.append(f"{name}/ has {len(loose)} images outside class folders (e.g. {loose[0]})")
        splits[name] = Split(name, tuple(classes), sum(counts.values()))
    train = splits[by_channel["training"][0]]
    if len(train.classes) < 2:
        problems.append(f"{train.name}/ has {len(train.classes)} class folders: a classifier needs at least two")
    for split in splits.values():
        unknown = sorted(set(split.classes) - set(train.classes))
        if unknown:
            problems.append(f"{split.name}/ has classes that {train.name}/ lacks: {', '.join(unknown[:5])}")
    if problems:
        raise UserError(f"{root}: " + "; ".join(problems))
    return splits


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
