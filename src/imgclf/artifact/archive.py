"""Extracting a model.tar.gz that someone else wrote, refusing what could escape or surprise.

A member that is absolute or climbs out with "..", a link (symbolic or hard), a device, a FIFO,
or anything but a plain file or folder makes the whole archive refused before a byte is written;
files are written without set-id bits and owned by whoever extracts. The checks are ours rather
than tarfile's `filter="data"` alone, which Python 3.11 has only from 3.11.4.
"""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path, PurePosixPath

from ..names import CARD_FILE, MODEL_ARCHIVE


class UnsafeArchive(ValueError):
    """An archive with a member that would land outside the destination or is not a plain file."""


def packed_model(folder: Path) -> Path | None:
    """The model.tar.gz that a model folder holds in place of the extracted artifact, if it does."""
    archive = folder / MODEL_ARCHIVE
    return archive if archive.is_file() and not (folder / CARD_FILE).is_file() else None


def check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        name = PurePosixPath(m.name)
        if name.is_absolute() or ".." in name.parts:
            raise UnsafeArchive(f"{m.name!r} would be written outside the destination")
        if m.issym() or m.islnk():
            raise UnsafeArchive(f"{m.name!r} is a link (to {m.linkname!r}); links are refused")
        if not (m.isfile() or m.isdir()):
            raise UnsafeArchive(f"{m.name!r} is a device, FIFO or other special file; only files and folders are allowed")
    return members


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract `archive` (any compression tarfile reads) into `dest`; raises `UnsafeArchive` and
    writes nothing when a member is unsafe."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(archive) as tar:
            for m in check_members(tar):
                target = (root / m.name).resolve()
                if target != root and root not in target.parents:  # e.g. through a folder named like a link
                    raise UnsafeArchive(f"{m.name!r} would be written outside the destination")
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                target.chmod(m.mode & 0o755 | 0o600)
    except tarfile.TarError as e:
        raise UnsafeArchive(f"{archive}: not a readable tar archive: {e}") from None
    return dest


def read_members(fileobj, names: tuple[str, ...] | frozenset[str]) -> dict[str, bytes]:
    """The named top-level files of a model.tar.gz stream (a file or an S3 body), read as it streams
    in and no further than the last of them; nothing is written."""
    found = {}
    with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and name in names:
                found[name] = tar.extractfile(member).read()
                if len(found) == len(names):
                    break
    return found
