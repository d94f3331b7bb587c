"""WebDataset shards: packing and reading back, unreadable samples skipped and counted, distinct shards
and equal steps per rank, training jobs and the feature cache on a channel of shards, the launcher."""
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import COLORS, free_port, make_image_folder
from PIL import Image
from test_train import job_env, train_cli

from imgclf.artifact.card import load_card
from imgclf.launch import datasets
from imgclf.names import UserError
from imgclf.train import features, shards
from imgclf.train.data import make_loader
from imgclf.train.job import run
from imgclf.train.shard_dataset import ShardChannel, ShardDataset, deal

LITE = {"arch": "efficientnet_lite0", "pretrained": "true", "recipe": "linear", "image-size": "64", "epochs": "1",
        "augment": "false", "features": "true"}


def samples(ds, num_workers=0, batch_size=4):
    """(labels read, unreadable skipped, steps) of one pass through the product's loader."""
    labels, skipped, steps = [], 0, 0
    for _, targets, n_skipped in make_loader(ds, batch_size=batch_size, num_workers=num_workers):
        labels += targets.tolist()
        skipped += n_skipped
        steps += 1
    return labels, skipped, steps


def single(folder, classes=None, **kwargs):
    channel = ShardChannel.open(folder)
    return ShardDataset(channel, classes or channel.index.classes, kwargs.pop("transform", None),
                        batch_size=kwargs.pop("batch_size", 4), **{"train": False, **kwargs})


def test_pack_and_read_back_classes_counts_and_labels(tmp_path):
    source = make_image_folder(tmp_path / "images", per_class=7)
    index = shards.pack(source, tmp_path / "shards", shard_size_mb=0.01)
    assert index.classes == tuple(sorted(COLORS)) and index.class_counts == dict.fromkeys(sorted(COLORS), 7)
    assert len(index.shards) > 2 and sum(index.shards.values()) == 21
    assert shards.shard_files(tmp_path / "shards") == sorted(index.shards)
    assert all(p.stat().st_size <= 0.01e6 + 4096 for p in (tmp_path / "shards").glob("*.tar"))

    # every image, its bytes unchanged, under its folder's class
    originals = {(p.read_bytes(), index.classes.index(p.parent.name)) for p in source.rglob("*.jpg")}
    read = {shards.image_and_label(parts) for name in index.shards
            for _, parts in shards.read_samples(tmp_path / "shards" / name)}
    assert read == originals

    # through the dataset and loader, the labels follow the job's class list (here: one more class first)
    job_classes = ["aqua", *index.classes]
    labels, skipped, _ = samples(single(tmp_path / "shards", job_classes, transform=lambda img: torch.zeros(1)))
    assert skipped == 0 and sorted(labels) == sorted([1] * 7 + [2] * 7 + [3] * 7)

    # WebDataset's own reader reads them as the same samples
    wds = pytest.importorskip("webdataset")
    urls = [str(tmp_path / "shards" / n) for n in index.shards]
    got = sorted(int(s["cls"]) for s in wds.WebDataset(urls, shardshuffle=False))
    assert got == sorted([0] * 7 + [1] * 7 + [2] * 7)


def test_unreadable_samples_and_a_truncated_shard_are_skipped_and_counted(tmp_path):
    source = make_image_folder(tmp_path / "images", per_class=6)
    (source / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    index = shards.pack(source, tmp_path / "shards", shard_size_mb=0.01)
    last = tmp_path / "shards" / list(index.shards)[-1]
    last.write_bytes(last.read_bytes()[:1500])  # ends inside its first samples
    labels, skipped, steps = samples(single(tmp_path / "shards", transform=lambda img: torch.zeros(1)))
    assert len(labels) + skipped == 19 and skipped >= 2  # the bad JPEG and what the cut shard lost
    assert steps == 5  # ceil(19 / 4): a broken shard does not change the step count


def write_uneven_shards(folder: Path, counts: list[int]) -> shards.ShardIndex:
    """Shards of the given sizes in WebDataset layout; each image's grey level is its sample number."""
    folder.mkdir(parents=True)
    number, names = 0, {}
    for i, count in enumerate(counts):
        name = shards.SHARD_PATTERN.format(i)
        with tarfile.open(folder / name, "w") as tar:
            for _ in range(count):
                png = io.BytesIO()
                Image.new("RGB", (2, 2), (number, 0, 0)).save(png, "PNG")
                for ext, data in (("png", png.getvalue()), ("cls", str(number % 2).encode())):
                    info = tarfile.TarInfo(f"{number:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                number += 1
        names[name] = count
    index = shards.ShardIndex(("a", "b"), {"a": 0, "b": 0}, names)
    (folder / shards.INDEX_FILE).write_text(index.to_json())
    return index


def sample_number(img):
    return img.getpixel((0, 0))[0]


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_reads_distinct_shards_and_all_take_the_same_steps(tmp_path, world_size):
    index = write_uneven_shards(tmp_path / "shards", [5, 1, 3, 2, 4, 1, 2, 6])
    total = sum(index.shards.values())
    views = [list(index.shards)] * world_size  # every host holds every shard (FullyReplicated)
    for epoch in (1, 2):
        read, steps, shares = [], [], []
        for rank in range(world_size):
            ds = ShardDataset(ShardChannel(tmp_path / "shards", index, views, rank), ["a", "b"], sample_number,
                              train=True, batch_size=3, seed=5)
            ds.set_epoch(epoch)
            shares.append({s for s, _ in ds.shares()[rank]})
            numbers, rank_steps = [], 0
            for batch, _, skipped in make_loader(ds, batch_size=3, num_workers=2 if rank == 0 else 0):
                numbers += batch.tolist()
                rank_steps += 1
            read.append(numbers)
            steps.append(rank_steps)
        assert len(set(steps)) == 1, steps  # DDP needs the same number of steps on every rank
        assert len({len(r) for r in read}) == 1  # padded to the longest rank's count
        assert all(not (a & b) for i, a in enumerate(shares) for b in shares[i + 1:])  # distinct shards
        assert set().union(*map(set, read)) == set(range(total))  # every sample in every epoch
        owners = {n: r for r, numbers in enumerate(read) for n in numbers}
        assert all(len({owners[n] for n in numbers}) == 1 for numbers in read)  # padding repeats own samples
    assert deal(views, index.shards, 5, 1) != deal(views, index.shards, 5, 2)  # a new order each epoch


def test_more_ranks_than_shards_is_refused_on_every_rank(tmp_path):
    index = write_uneven_shards(tmp_path / "shards", [3, 2])
    for rank in range(3):
        ds = ShardDataset(ShardChannel(tmp_path / "shards", index, [list(index.shards)] * 3, rank), ["a", "b"],
                          train=True, batch_size=2)
        with pytest.raises(UserError, match="1 rank.* no training samples .*--shard-size-mb"):
            len(ds)


def test_sharded_by_s3_key_the_ranks_of_a_host_split_its_share():
    counts = {f"s{i}": 10 for i in range(6)}
    views = [["s0", "s2", "s4"]] * 2 + [["s1", "s3", "s5"]] * 2  # two hosts, two ranks each
    shares = deal(views, counts, 0, 3)
    assert set(shares[0]) | set(shares[1]) == {"s0", "s2", "s4"} and not set(shares[0]) & set(shares[1])
    assert set(shares[2]) | set(shares[3]) == {"s1", "s3", "s5"}


def pack_job_data(image_folders: Path, dest: Path, size_mb=0.01) -> Path:
    datasets.pack(image_folders, dest, size_mb)
    return dest


def test_trains_on_shards_with_and_without_a_validation_channel(tmp_path, image_folders):
    data = pack_job_data(image_folders, tmp_path / "shards")
    env = job_env(tmp_path / "job", data, **{"num-workers": "2"})
    assert run(env) == 0
    history = json.loads((env.output_data_dir / "metrics.json").read_text())
    assert [h.get("epoch") for h in history[:2]] == [1, 2] and "test_acc" in history[-1]
    card = load_card(env.model_dir)
    assert card.classes == ("blue", "green", "red")

    held_out = job_env(tmp_path / "held_out", data, epochs="1")
    del held_out.channels["validation"]
    assert run(held_out) == 0


@pytest.mark.slow
def test_two_hosts_each_with_its_share_of_the_shards_train_with_ddp(tmp_path, image_folders):
    """ShardedByS3Key: host 1 holds the even shards and the index, host 2 the odd shards only."""
    data = pack_job_data(image_folders, tmp_path / "shards")
    names = shards.shard_files(data / "train")
    for host, part in enumerate((names[0::2], names[1::2])):
        (tmp_path / f"host{host}").mkdir()
        for name in part + ([shards.INDEX_FILE] if host == 0 else []):
            os.link(data / "train" / name, tmp_path / f"host{host}" / name)
    env = job_env(tmp_path / "job", data)
    dist = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    procs = []
    for rank in range(2):
        env.channels["training"] = tmp_path / f"host{rank}"
        procs.append(train_cli(env, {**dist, "RANK": str(rank)}))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "epoch=2 train_loss" in outs[0] and "rank 1 of 2 (gloo)" in outs[1]
    assert load_card(env.model_dir).classes == ("blue", "green", "red")


@pytest.mark.slow
def test_feature_cache_on_shards_is_keyed_by_the_shard_files(tmp_path, image_folders):
    data = pack_job_data(image_folders, tmp_path / "shards")
    env = job_env(tmp_path / "job", data, **LITE)
    assert run(env) == 0
    manifest = json.loads((env.checkpoint_dir / "features" / features.MANIFEST).read_text())
    assert [row[0] for row in manifest["data"]["train"]] == shards.shard_files(data / "train")
    assert manifest["splits"]["train"]["count"] == 36 and manifest["splits"]["test"]["count"] == 12
    key = manifest["key"]

    (env.checkpoint_dir / "checkpoint.pt").unlink()
    assert run(env) == 0  # reused: same key
    assert json.loads((env.checkpoint_dir / "features" / features.MANIFEST).read_text())["key"] == key
    shard = data / "train" / shards.shard_files(data / "train")[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    (env.checkpoint_dir / "checkpoint.pt").unlink()
    assert run(env) == 0  # a changed shard: computed again
    assert json.loads((env.checkpoint_dir / "features" / features.MANIFEST).read_text())["key"] != key


def test_launcher_checks_packed_splits_and_asks_for_sharded_fast_file_inputs(tmp_path, image_folders):
    data = pack_job_data(image_folders, tmp_path / "shards", size_mb=150)
    splits = datasets.check_layout(data)
    assert {s.name: s.images for s in splits.values()} == {"train": 36, "valid": 12, "test": 12}
    assert len(shards.shard_files(data / "train")) == 1
    inputs = datasets.sdk_inputs({"training": "s3://b/shards/train", "validation": "s3://b/shards/valid"},
                                 "FastFile", "ShardedByS3Key")
    assert inputs["training"].config["InputMode"] == "FastFile"
    assert inputs["training"].config["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert inputs["validation"].config["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated"

