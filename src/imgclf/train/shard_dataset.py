"""A channel of WebDataset shards (shards.py) as the training job's dataset.

Who reads what: ranks that see the same shard files deal those files out among themselves: all
ranks when every host has every shard (File or FastFile mode, S3 FullyReplicated), the ranks of
one host under ShardedByS3Key, where each host's channel holds only its share. The ranks learn
each other's files, and the index that only one host may hold, from one all_gather at start-up.
Each epoch the shards are dealt anew (shuffled by seed and epoch), each to the rank with the
fewest samples so far, so that every rank reads distinct shards and the ranks' counts differ by
less than one shard.

Equal steps: every rank takes as many training samples as the rank with the most, repeating its
own samples from the start to make up the difference (as torch's DistributedSampler pads). DDP
needs every rank to take the same number of steps; padding keeps every sample in every epoch,
where cutting to the shortest rank would drop up to a shard per rank each epoch. Evaluation reads
each sample once, unpadded (it needs no equal steps). A loader's workers take contiguous runs of
whole batches of their rank's samples. A sample that cannot be read (bad image, missing label, a
shard that ends early or cannot be opened) arrives as None: data.collate_skipping_unreadable drops
and counts it, and the step count stays the same.
"""
from __future__ import annotations

import io
import logging
import os
import random
import tarfile
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..artifact.images import load_rgb
from ..names import UserError
from .data import UNREADABLE
from .shards import INDEX_FILE, ShardIndex, image_and_label, is_shard_folder, read_index, read_samples, shard_files

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 512  # encoded samples a training worker shuffles among, on top of the shard order


class ShardChannel:
    """A channel's shards: the index, and the shard files each rank sees (`views`, by rank)."""

    def __init__(self, folder: Path, index: ShardIndex, views: Sequence[Sequence[str]], rank: int):
        self.folder, self.index, self.rank = Path(folder), index, rank
        self.views = [tuple(v) for v in views]
        unknown = sorted(set().union(*self.views) - set(index.shards))
        if unknown:
            raise UserError(f"{folder}: shards not in its {INDEX_FILE}: {', '.join(unknown[:5])} (pack the folder "
                            "again, or keep shards of one pack per channel)")

    @classmethod
    def open(cls, folder: Path) -> ShardChannel:
        """This process's view of a channel, and every other rank's when torch.distributed is running."""
        index = read_index(folder)  # naming the shards: no directory listing to read where it is present
        present = (tuple(s for s in index.shards if (Path(folder) / s).is_file()) if index
                   else tuple(shard_files(folder)))
        found = [(index, present)]
        rank = 0
        if dist.is_available() and dist.is_initialized():
            rank, found = dist.get_rank(), [None] * dist.get_world_size()
            dist.all_gather_object(found, (index, present))
        index = next((i for i, _ in found if i is not None), None)
        if index is None:
            raise UserError(f"no class folders and no {INDEX_FILE} in {folder} (nor on another host): give one "
                            "folder of images per class, or the folder `imgclf data pack` wrote")
        return cls(folder, index, [p for _, p in found], rank)


def deal(views: Sequence[Sequence[str]], counts: dict[str, int], seed: int, epoch: int | None) -> list[list[str]]:
    """The shards each rank reads: ranks with the same view deal its shards, largest first, each to the
    rank with the fewest samples so far; ties broken and each rank's reading order shuffled by (seed,
    epoch), or in name order when `epoch` is None (evaluation)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for rank, view in enumerate(views):
        groups.setdefault(tuple(sorted(view)), []).append(rank)
    shares: list[list[str]] = [[] for _ in views]
    rng = random.Random(f"{seed}:{epoch}")
    for view, ranks in groups.items():
        order = list(view)
        if epoch is not None:
            rng.shuffle(order)
        totals = dict.fromkeys(ranks, 0)
        for shard in sorted(order, key=lambda s: -counts[s]):  # stable: the shuffled order breaks ties
            rank = min(ranks, key=lambda r: (totals[r], r))
            shares[rank].append(shard)
            totals[rank] += counts[shard]
    if epoch is not None:  # read in a new order each epoch, not largest first
        for share in shares:
            rng.shuffle(share)
    return shares


def worker_range(total: int, batch_size: int, worker: int, workers: int) -> tuple[int, int]:
    """The samples [start, stop) of a rank that one loader worker reads: a contiguous run of whole
    batches, so that the workers' batches together are ceil(total / batch_size), as one reader's are."""
    batches = -(-total // batch_size)
    first, last = batches * worker // workers, batches * (worker + 1) // workers
    return first * batch_size, min(last * batch_size, total)


def cycle_segments(shares: Sequence[tuple[str, int]], start: int, stop: int) -> Iterator[tuple[str, int, int]]:
    """(shard, first, stop) runs covering positions [start, stop) of the shards read one after
    another and then again from the first (the padding)."""
    total = sum(c for _, c in shares)
    pos = start
    while pos < stop:
        offset = pos % total
        for shard, count in shares:
            if offset < count:
                n = min(count - offset, stop - pos)
                yield shard, offset, offset + n
                pos += n
                break
            offset -= count


def shuffled(items: Iterator, rng: random.Random, size: int) -> Iterator:
    """Items in an order shuffled within a sliding buffer of `size`."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


class ShardDataset(IterableDataset):
    """One rank's samples of a shard channel as (image, class index), or None where unreadable.

    `select`: the positions (in the index's order) to read, for a hold-out split; None reads all.
    `train`: shuffled and padded to the longest rank's count, with a new deal each `set_epoch`.
    """

    def __init__(self, channel: ShardChannel, classes: Sequence[str], transform: Callable | None = None, *,
                 train: bool, batch_size: int, seed: int = 0, select: frozenset[int] | None = None):
        unknown = sorted(set(channel.index.classes) - set(classes))
        if unknown:
            raise UserError(f"{channel.folder} has classes that training does not: {', '.join(unknown[:10])}")
        self.channel, self.transform, self.train = channel, transform, train
        self.batch_size, self.seed = batch_size, seed
        self.label_map = [list(classes).index(c) for c in channel.index.classes]
        self.positions, self.counts, offset = {}, {}, 0  # per shard: positions read (None: all) and count
        ordered = sorted(select) if select is not None else None
        for shard, count in channel.index.shards.items():
            kept = None if ordered is None else frozenset(
                p - offset for p in ordered[bisect_left(ordered, offset):bisect_left(ordered, offset + count)])
            self.positions[shard], self.counts[shard] = kept, count if kept is None else len(kept)
            offset += count
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by persistent workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def shares(self) -> list[list[tuple[str, int]]]:
        """Each rank's (shard, samples) this epoch."""
        epoch = int(self._epoch) if self.train else None
        return [[(s, self.counts[s]) for s in share]
                for share in deal(self.channel.views, self.counts, self.seed, epoch)]

    def __len__(self) -> int:
        shares = self.shares()
        totals = [sum(c for _, c in share) for share in shares]
        mine = totals[self.channel.rank]
        if self.train and not all(totals):  # every rank stops here alike: none waits for a failed one
            raise UserError(f"{self.channel.folder}: {totals.count(0)} rank(s) have no training samples "
                            f"({sum(map(len, shares))} shards for {len(shares)} ranks): pack smaller shards "
                            "(imgclf data pack --shard-size-mb) so that every rank gets one")
        return max(totals) if self.train else mine

    def __iter__(self):
        total = len(self)
        info = get_worker_info()
        start, stop = worker_range(total, self.batch_size, info.id if info else 0, info.num_workers if info else 1)
        share = self.shares()[self.channel.rank]
        samples = (s for segment in cycle_segments(share, start, stop) for s in self._read(*segment))
        if self.train:
            rng = random.Random(f"{self.seed}:{int(self._epoch)}:{self.channel.rank}:{start}")
            samples = shuffled(samples, rng, SHUFFLE_BUFFER)
        return map(self._decode, samples)

    def _read(self, shard: str, first: int, stop: int) -> Iterator[tuple[str, tuple[bytes, int] | None]]:
        """(name, (image bytes, label) or None) for the selected samples [first, stop) of a shard;
        exactly stop - first of them, None for those a broken shard lacks."""
        wanted, seen, given = self.positions[shard], 0, 0
        try:
            for position, (key, parts) in enumerate(read_samples(self.channel.folder / shard)):
                if wanted is not None and position not in wanted:
                    continue
                seen += 1
                if seen > first:
                    yield f"{shard}/{key}", image_and_label(parts)
                    given += 1
                    if seen >= stop:
                        return
        except (tarfile.TarError, OSError) as e:
            log.warning("shard %s: %s after %d samples", shard, e, seen)
        for _ in range(stop - first - given):
            yield f"{shard}/(missing)", None

    def _decode(self, item):
        name, sample = item
        try:
            if sample is None:
                raise ValueError("no image and class in this sample")
            data, label = sample
            if not 0 <= label < len(self.label_map):
                raise ValueError(f"class {label} is not in the shards' index")
            with Image.open(io.BytesIO(data)) as img:
                img = load_rgb(img, getattr(self.transform, "decode_min_side", 0))
        except UNREADABLE as e:
            log.warning("skipping unreadable sample %s: %s", name, e)
            return None
        return (self.transform(img) if self.transform else img), self.label_map[label]

    def data_identity(self) -> list[list]:
        """[shard file, size, mtime_ns] of the shards this process sees: what the feature cache keys on."""
        rows = []
        for shard in self.channel.views[self.channel.rank]:
            st = os.stat(self.channel.folder / shard)
            rows.append([shard, st.st_size, st.st_mtime_ns])
        return rows


def open_splits(channels: dict[str, Path], args, train_tf: Callable, eval_tf: Callable):
    """(classes, train, valid, test) of a job whose training channel holds shards; the class list is the
    training index's. Validation and test may be shards or class folders; without a validation
    channel, a seeded fraction of the training samples is held out."""
    from .data import ImageFolderDataset, split_indices

    training = ShardChannel.open(channels["training"])
    classes = list(training.index.classes)
    common = dict(batch_size=args.batch_size, seed=args.seed)

    def evaluation(name: str):
        if name not in channels:
            return None
        if not is_shard_folder(channels[name]):
            return ImageFolderDataset(channels[name], classes, eval_tf)
        return ShardDataset(ShardChannel.open(channels[name]), classes, eval_tf, train=False, **common)

    select = None
    valid = evaluation("validation")
    if valid is None:
        train_idx, valid_idx = split_indices(sum(training.index.shards.values()), args.valid_split, args.seed)
        log.info("no validation channel: holding out %d of %d training images", len(valid_idx),
                 len(train_idx) + len(valid_idx))
        select = frozenset(train_idx)
        valid = ShardDataset(training, classes, eval_tf, train=False, select=frozenset(valid_idx), **common)
    train = ShardDataset(training, classes, train_tf, train=True, select=select, **common)
    return classes, train, valid, evaluation("test")
