"""Training checkpoints: written so that a kill or a full disk never leaves only a broken one, and
read back with a fallback to the previous one when the latest is corrupt or truncated.

    checkpoint.pt           the latest: weights, optimizer, scaler, loop state, model card
    checkpoint.pt.sha256    its SHA-256, checked before loading
    checkpoint.prev.pt      the one before it (and its .sha256)

A new checkpoint is written to a temporary file and synced, then the latest becomes the previous
and the new one the latest, each by a rename. A file that fails its digest or `torch.load`
(weights_only) is logged and skipped; with none usable the job starts from scratch.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import torch

from ..artifact.card import ModelCard
from ..names import UserError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
KEYS = ("model", "optimizer", "scaler", "state", "card")


def previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_synced(path: Path, write) -> None:
    """`write(file)` into `path`, flushed to the disk before returning; an OSError names `path`."""
    try:
        with open(path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


def save_checkpoint(path: Path, model, optimizer, scaler, state, card: ModelCard) -> None:
    """Save the (unwrapped) model with everything needed to resume; `state` is the loop's
    dataclass. An error (a full disk: OSError ENOSPC) leaves the earlier checkpoints as they were."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    doc = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
           "state": dict(vars(state)), "card": card.to_dict()}
    buf = io.BytesIO()
    torch.save(doc, buf)  # in memory first: writing it ourselves, a full disk is an OSError naming the file
    try:
        write_synced(tmp, lambda f: f.write(buf.getbuffer()))
        write_synced(digest_file(tmp), lambda f: f.write(sha256(tmp).encode()))
    except BaseException:
        tmp.unlink(missing_ok=True)
        digest_file(tmp).unlink(missing_ok=True)
        raise
    if path.exists():
        os.replace(path, previous(path))
        if digest_file(path).exists():
            os.replace(digest_file(path), digest_file(previous(path)))
        else:  # written before digests: no stale digest may vouch for it
            digest_file(previous(path)).unlink(missing_ok=True)
    os.replace(tmp, path)
    os.replace(digest_file(tmp), digest_file(path))


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents; ValueError when it is corrupt, truncated or not ours."""
    digest = digest_file(path)
    if digest.exists() and digest.read_text().strip() != sha256(path):
        raise ValueError("its SHA-256 does not match the one written with it")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        raise ValueError(f"torch.load failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(doc, dict) or not set(KEYS) <= doc.keys():
        raise ValueError(f"missing {', '.join(sorted(set(KEYS) - set(doc or {})))}")
    return doc


def load_checkpoint(path: Path, model, optimizer, scaler, card: ModelCard) -> dict | None:
    """Restore the newest usable checkpoint (the latest, else the previous) into the (unwrapped)
    model, optimizer and scaler; returns the loop state saved with it, or None to start afresh.
    A checkpoint of another arch or class list is a `UserError`."""
    for candidate in (path, previous(path)):
        if not candidate.is_file():
            continue
        try:
            doc = read_checkpoint(candidate)
        except (ValueError, OSError) as e:
            log.warning("checkpoint %s is corrupt or truncated (%s): skipping it", candidate, e)
            continue
        saved = ModelCard.from_dict(doc["card"])
        if (saved.arch, saved.classes) != (card.arch, card.classes):
            raise UserError(
                f"checkpoint {candidate} is for {saved.arch} with {len(saved.classes)} classes, this job trains "
                f"{card.arch} with {len(card.classes)}: clear the checkpoint location or match the job"
            )
        model.load_state_dict(doc["model"])
        optimizer.load_state_dict(doc["optimizer"])
        scaler.load_state_dict(doc["scaler"])
        if candidate != path:
            log.warning("resuming from the previous checkpoint %s", candidate)
        return doc["state"]
    if path.exists() or previous(path).exists():
        log.warning("no usable checkpoint in %s: training from the start", path.parent)
    return None
