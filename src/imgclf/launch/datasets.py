"""The data set: fetch the dog-breed images, pack shards, map split folders to channels, upload.

The layout (train/ [valid/ test/], one folder per class, or shards of them that `pack` wrote) is
checked by `imgclf.layout`; the splits become the training job's channels `training`,
`validation` and `test`.
"""
from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from ..names import UserError
from ..train import shards
from ..train.layout import SPLIT_CHANNELS, check_layout

DOG_IMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"


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


def pack(source: Path, dest: Path, shard_size_mb: float = shards.DEFAULT_SHARD_SIZE_MB) -> dict[str, shards.ShardIndex]:
    """Pack class folders into shards: each split of a data root (train/ valid/ test/) into dest/<split>,
    or the class folders of one split into dest."""
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise UserError(f"no folder {source}: give pack a folder of class folders, or a data root with train/")
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
