"""WebDataset tar shards: packing class folders into them, their index, and reading them as a stream.

A shard is a plain tar file in WebDataset's layout: each sample is two members sharing a key,
`<key>.<image extension>` (the original bytes, never re-encoded) and `<key>.cls` (the class
number as text). `shards.json` beside the shards holds what a job needs before reading any:

    {"format": "webdataset", "version": 1, "classes": [...], "class_counts": {class: n},
     "shards": [{"name": "shard-000000.tar", "count": n}, ...]}

Packing shuffles the images across classes (seeded), so that every shard, and every host's share
of them, holds a mix of classes. Shards are read front to back, never seeking: in FastFile mode
SageMaker streams a file from S3 as it is read. Standard library only: the launcher packs
without torch.
"""
from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..names import UserError

INDEX_FILE = "shards.json"
SHARD_PATTERN = "shard-{:06d}.tar"
DEFAULT_SHARD_SIZE_MB = 150  # AWS's guidance for data read by SageMaker: files of about 100-200 MB
FORMAT, VERSION = "webdataset", 1
LABEL_EXT = "cls"
# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS), without importing it
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TAR_BLOCK = 512  # a member costs a header block plus its data padded to whole blocks


@dataclass(frozen=True)
class ShardIndex:
    """What shards.json says: the class list, images per class, and each shard's sample count."""

    classes: tuple[str, ...]
    class_counts: dict[str, int]
    shards: dict[str, int]  # shard file name -> samples, in packing order

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "classes": list(self.classes),
                           "class_counts": self.class_counts,
                           "shards": [{"name": n, "count": c} for n, c in self.shards.items()]}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> ShardIndex:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT or raw.get("version") != VERSION:
                raise ValueError(f"format {raw.get('format')!r} version {raw.get('version')!r}, "
                                 f"expected {FORMAT!r} version {VERSION}")
            return cls(tuple(raw["classes"]), dict(raw["class_counts"]),
                       {s["name"]: int(s["count"]) for s in raw["shards"]})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{where}: not a shard index written by `imgclf data pack` ({e})") from None


def read_index(folder: Path) -> ShardIndex | None:
    """The index of a shard folder; None when the folder has none."""
    path = Path(folder) / INDEX_FILE
    return ShardIndex.from_json(path.read_text(), path) if path.is_file() else None


def shard_files(folder: Path) -> list[str]:
    """The shard files present in a folder, sorted (under ShardedByS3Key: this host's share)."""
    return sorted(p.name for p in Path(folder).glob("*.tar") if p.is_file())


def is_shard_folder(folder: Path) -> bool:
    """A channel of shards: it has the index or tar files, or no class folders at all (under
    ShardedByS3Key a host's share may lack the index, or hold nothing)."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file() or shard_files(folder):
        return True
    return not any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# packing


def _class_images(source: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(f"{source} has {len(classes)} class folders: pack a folder with one folder per class")
    images = [(p, label) for label, name in enumerate(classes) for p in sorted((source / name).rglob("*"))
              if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()]
    if not images:
        raise UserError(f"no images in the class folders of {source} (extensions: {', '.join(IMG_EXTENSIONS)})")
    return classes, images


def _member_bytes(size: int) -> int:
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: packing is reproducible
    tar.addfile(info, io.BytesIO(data))


def pack(source: Path, dest: Path, shard_size_mb: float = DEFAULT_SHARD_SIZE_MB, seed: int = 0) -> ShardIndex:
    """Pack the class folders of `source` into shards of about `shard_size_mb` in `dest`, then the index.

    Each shard is written under a temporary name and renamed when complete; the index comes last,
    so a folder with an index holds every shard it names.
    """
    source, dest = Path(source), Path(dest)
    if shard_size_mb <= 0:
        raise UserError(f"shard size {shard_size_mb} MB: give a positive size")
    classes, images = _class_images(source)
    random.Random(seed).shuffle(images)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / INDEX_FILE).unlink(missing_ok=True)
    limit = shard_size_mb * 1e6
    shards: dict[str, int] = {}
    counts = dict.fromkeys(classes, 0)
    tar = None
    for number, (path, label) in enumerate(images):
        data = path.read_bytes()
        key, ext = f"{number:09d}", path.suffix.lower().lstrip(".")
        size = _member_bytes(len(data)) + _member_bytes(len(str(label)))
        if tar is None or (shards[name] and written + size > limit):
            if tar is not None:
                _close(tar, dest, name)
            name, written = SHARD_PATTERN.format(len(shards)), 2 * TAR_BLOCK  # the end-of-archive blocks
            shards[name] = 0
            tar = tarfile.open(dest / (name + ".tmp"), "w", format=tarfile.USTAR_FORMAT)
        _add(tar, f"{key}.{ext}", data)
        _add(tar, f"{key}.{LABEL_EXT}", str(label).encode())
        written += size
        shards[name] += 1
        counts[classes[label]] += 1
    _close(tar, dest, name)
    index = ShardIndex(tuple(classes), counts, shards)
    (dest / (INDEX_FILE + ".tmp")).write_text(index.to_json())
    os.replace(dest / (INDEX_FILE + ".tmp"), dest / INDEX_FILE)
    return index


def _close(tar: tarfile.TarFile, dest: Path, name: str) -> None:
    tar.close()
    os.replace(dest / (name + ".tmp"), dest / name)


# ---------------------------------------------------------------------------------------------
# reading


def read_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of a shard, in file order, read as a stream.

    Raises tarfile.ReadError or OSError where the file is not a tar or ends early, after yielding
    the samples before that point.
    """
    with open(path, "rb", buffering=1 << 20) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        key, parts = None, {}
        for member in tar:
            if not member.isfile():
                continue
            stem, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
            if stem != key and parts:
                yield key, parts
                parts = {}
            key = stem
            parts[ext.lower()] = tar.extractfile(member).read()
        if parts:
            yield key, parts


def image_and_label(parts: dict[str, bytes]) -> tuple[bytes, int] | None:
    """A sample's image bytes and class number; None when one of them is missing or unreadable."""
    image = next((data for ext, data in parts.items() if "." + ext in IMG_EXTENSIONS), None)
    try:
        label = int(parts[LABEL_EXT])
    except (KeyError, ValueError):
        return None
    return (image, label) if image is not None else None
