"""The data set: fetch the dog-breed images, check the class-folder layout, pack shards, map folders to
channels, upload.

A data set is a folder (or S3 prefix) with `train/`, and optionally `valid/` and `test/`, each
holding one folder of images per class, as dogImages.zip unpacks, or the WebDataset shards that
`pack` made of them (shards.py). The splits become the training
job's channels `training`, `validation` and `test`; folders already named after the channels
(`training/`, `validation/`, as in a job's /opt/ml/input/data) are taken as they are.
"""
from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .. import shards
from ..contract import UserError

# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS), written out so
# that the launcher does not import torch
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DOG_IMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
# split folder name -> channel, in the order they are looked for
SPLIT_CHANNELS = {"train": "training", "training": "training", "valid": "validation",
                  "validation": "validation", "test": "test"}


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a HEAD request gets any HTTP answer (no internet: no answer at all)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True  # the server answered
    except (urllib.error.URLError, OSError):
        return False


def fetch(dest: Path, url: str = DOG_IMAGES_URL, timeout: float = 30.0) -> Path:
    """Download and unpack the zip at `url` into `dest`; returns the folder that holds `train/`.

    The download goes to a `.part` file renamed when complete, so an interrupted run never leaves
    a zip that looks whole; an archive already downloaded is reused.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / Path(urlparse(url).path).name
    if not archive.is_file():
        if not reachable(url):
            raise UserError(f"cannot reach {url}: download it where the internet is reachable, "
                            f"unpack it and give the folder to `imgclf data check`")
        part = archive.with_name(archive.name + ".part")
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
        part.rename(archive)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(dest)  # zipfile drops absolute paths and '..' from member names
    return find_root(dest)


def find_root(folder: Path) -> Path:
    """`folder` itself or the one folder below it (such as dogImages/) that holds `train/`."""
    folder = Path(folder)
    if (folder / "train").is_dir():
        return folder
    found = [p.parent for p in sorted(folder.glob("*/train*")) if p.name in ("train", "training")
             and p.is_dir() and not p.parent.name.startswith(("_", "."))]  # not unpacking debris: __MACOSX/
    if len(found) != 1:
        raise UserError(f"expected one folder with train/ in {folder}, found {len(found)}")
    return found[0]


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


def pack(source: Path, dest: Path, shard_size_mb: float = shards.DEFAULT_SHARD_SIZE_MB) -> dict[str, shards.ShardIndex]:
    """Pack class folders into shards: each split of a data root (train/ valid/ test/) into dest/<split>,
    or the class folders of one split into dest."""
    source, dest = Path(source), Path(dest)
    present = [name for name in SPLIT_CHANNELS if (source / name).is_dir()]
    if not present:
        return {source.name: shards.pack(source, dest, shard_size_mb)}
    check_layout(source)
    return {name: shards.pack(source / name, dest / name, shard_size_mb) for name in present}


def sdk_inputs(channels: dict[str, str], input_mode: str | None = None, distribution: str | None = None) -> dict:
    """Channels as the SDK's TrainingInput where a mode or distribution is asked for. FastFile streams
    each file from S3 as it is read; ShardedByS3Key gives each instance its own share of the training
    channel's files (the other channels stay whole on every instance)."""
    if not input_mode and not distribution:
        return channels
    from sagemaker.inputs import TrainingInput

    return {name: TrainingInput(uri, input_mode=input_mode,
                                distribution=distribution if name == "training" and distribution else "FullyReplicated")
            for name, uri in channels.items()}


def local_uri(location: str | Path) -> str:
    """A file:// URI for a local path, as local mode takes data; a URI is returned as it is."""
    if "://" in str(location):
        return str(location)
    return Path(location).resolve().as_uri()


def channels(data: str | None, splits=(), **extra: str | None) -> dict[str, str]:
    """Channel name -> URI for a data root (file:// or s3://), one per split present.

    `splits` names the split folders present (as `check_layout` or an S3 listing found them);
    `extra` adds or replaces channels, e.g. pretrained='s3://bucket/weights/'.
    """
    data = (data or "").rstrip("/")
    found = {SPLIT_CHANNELS[s]: f"{data}/{s}" for s in splits if s in SPLIT_CHANNELS}
    found.update({k: v for k, v in extra.items() if v})
    return found


def s3_splits(s3_uri: str, boto_session) -> list[str]:
    """The split folders (train, valid, test, or named as the channels) under an S3 data root."""
    bucket, prefix = _split_s3(s3_uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    listing = boto_session.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
    present = {p["Prefix"][len(prefix):].rstrip("/") for p in listing.get("CommonPrefixes", [])}
    return [s for s in SPLIT_CHANNELS if s in present]


def upload(root: Path, s3_uri: str, session) -> str:
    """Check `root`, upload it under `s3_uri`; returns the S3 data root for `imgclf train --data`."""
    check_layout(root)
    bucket, prefix = _split_s3(s3_uri)
    return session.upload_data(str(root), bucket=bucket, key_prefix=prefix.rstrip("/"))


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UserError(f"not an S3 URI: {uri} (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")
