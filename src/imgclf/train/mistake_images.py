"""Which held-out images the model got wrong: an evaluation pass's answers traced back to the
images of its data set, and thumbnails of the most confident mistakes of each most confused
pair (artifact/mistakes.py keeps them, the report shows them).

An evaluation loader reads its data set in its sampler's order, `batch_size` at a time, and drops
unreadable images from a batch (and a batch without a readable one): the answers of each whole
batch map to data set indices. Data without per-image files (shards, cached features) keeps no
thumbnails.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch.utils.data import IterableDataset, Subset

from ..artifact import mistakes

log = logging.getLogger("imgclf.train")


def dataset_targets(dataset) -> list[int] | None:
    """The class index of every image of a dataset, where it knows them without reading the images."""
    if isinstance(dataset, Subset):
        inner = dataset_targets(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    return None if targets is None else [int(t) for t in targets]


def image_paths(dataset) -> list[str] | None:
    """The file of every image of a dataset (an ImageFolderDataset or a Subset of one), else None."""
    if isinstance(dataset, Subset):
        inner = image_paths(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    return None if samples is None else [path for path, _ in samples]


def positions(keep: list, loader) -> np.ndarray:
    """The data set index of each answer an evaluation pass kept (engine.evaluate's `keep`, this
    rank's batches), -1 where unknown: in a batch that lost an unreadable image, or everywhere when
    a whole batch was lost (the batches no longer line up with the sampler's)."""
    found = np.full(sum(len(t) for t, _ in keep), -1, dtype=np.int64)
    targets = None if isinstance(loader.dataset, IterableDataset) else dataset_targets(loader.dataset)
    if targets is None:
        return found
    order, size, at = list(loader.sampler), loader.batch_size, 0
    if len(keep) != -(-len(order) // size):
        return found
    for i, (batch_targets, _) in enumerate(keep):
        chunk = order[i * size:(i + 1) * size]
        if batch_targets.tolist() == [targets[j] for j in chunk]:
            found[at:at + len(chunk)] = chunk
        at += len(batch_targets)
    return found


def collect(pairs: list[dict], classes: list[str], y_true: np.ndarray, probs: np.ndarray, where: np.ndarray,
            dataset) -> list[dict]:
    """mistakes.json's pairs: for each of `pairs` (evaluation.json's most_confused), up to PER_PAIR
    of its images, the most confident mistakes first, within MAX_JPEG_BYTES in all."""
    from .data import UNREADABLE

    paths = image_paths(dataset) if dataset is not None else None
    if pairs and not paths:
        log.info("no thumbnails of the mistakes: the evaluated images have no files (shards or cached features)")
    index = {c: i for i, c in enumerate(classes)}
    y_pred, budget, out = probs.argmax(1), mistakes.MAX_JPEG_BYTES, []
    for pair in pairs:
        t, p = index[pair["true"]], index[pair["predicted"]]
        chosen = np.flatnonzero((y_true == t) & (y_pred == p) & (where >= 0)) if paths else []
        images = []
        for i in sorted(chosen, key=lambda j: -probs[j, p]):  # the most confident first
            path = Path(paths[where[i]])
            try:
                jpeg = mistakes.thumbnail_of(path)
            except UNREADABLE:
                continue
            if len(jpeg) > budget:
                break
            budget -= len(jpeg)
            images.append(mistakes.entry(f"{path.parent.name}/{path.name}", probs[i, p], jpeg))
            if len(images) == mistakes.PER_PAIR:
                break
        out.append({"true": pair["true"], "predicted": pair["predicted"], "images": images})
    return out
