import pytest
import torch
from conftest import make_image_folder

from imgclf.names import UserError
from imgclf.train.data import (
    ImageFolderDataset,
    ShardSampler,
    collate_skipping_unreadable,
    find_classes,
    make_loader,
    split_indices,
)
from imgclf.train.presets import ClassificationPresetEval


def eval_tf():
    return ClassificationPresetEval(crop_size=16, resize_size=18)


def test_classes_are_sorted_folder_names(tmp_path):
    make_image_folder(tmp_path, per_class=1)
    (tmp_path / ".hidden").mkdir()
    assert find_classes(tmp_path) == ["blue", "green", "red"]


def test_no_class_folders_and_one_class_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no class folders"):
        find_classes(tmp_path)
    (tmp_path / "dogs").mkdir()
    with pytest.raises(UserError, match="only one class"):
        find_classes(tmp_path)


def test_empty_class_folders_mean_no_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match="no images"):
        ImageFolderDataset(tmp_path, ["a", "b"])


def test_validation_class_unknown_to_training_is_an_error(tmp_path):
    make_image_folder(tmp_path, per_class=1)
    with pytest.raises(UserError, match="red"):
        ImageFolderDataset(tmp_path, ["blue", "green"])


def test_validation_may_lack_a_class_and_keeps_training_indices(tmp_path):
    make_image_folder(tmp_path, per_class=2, classes={"red": (255, 0, 0)})
    ds = ImageFolderDataset(tmp_path, ["blue", "green", "red"], eval_tf())
    assert set(ds.targets) == {2}


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    make_image_folder(tmp_path, per_class=3)
    (tmp_path / "red" / "garbage.jpg").write_bytes(b"not an image")
    good = (tmp_path / "blue" / "0.jpg").read_bytes()
    (tmp_path / "blue" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "green" / "empty.png").write_bytes(b"")
    ds = ImageFolderDataset(tmp_path, find_classes(tmp_path), eval_tf())
    loader = make_loader(ds, batch_size=4, num_workers=0)
    seen = skipped = 0
    for images, targets, n_skipped in loader:
        assert images.shape[0] == targets.shape[0]
        seen += len(targets)
        skipped += n_skipped
    assert (seen, skipped) == (9, 3)


def test_collate_of_an_all_bad_batch_is_empty():
    images, targets, skipped = collate_skipping_unreadable([None, None])
    assert images.numel() == 0 and targets.numel() == 0 and skipped == 2


def test_split_is_seeded_disjoint_and_complete():
    train, valid = split_indices(50, 0.2, seed=3)
    assert (train, valid) == split_indices(50, 0.2, seed=3)
    assert len(valid) == 10 and sorted(train + valid) == list(range(50))
    assert split_indices(50, 0.2, seed=4)[1] != valid


def test_shard_sampler_covers_each_index_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_loader_with_workers_returns_the_same_batches(tmp_path):
    make_image_folder(tmp_path, per_class=4)
    ds = ImageFolderDataset(tmp_path, find_classes(tmp_path), eval_tf())
    serial = [b[1] for b in make_loader(ds, batch_size=5, num_workers=0)]
    parallel = [b[1] for b in make_loader(ds, batch_size=5, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
