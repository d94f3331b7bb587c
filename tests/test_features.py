"""The feature cache: a head trained on cached backbone features matches one trained through the
backbone, the artifact is still the whole network, sets are reused by key and refused when they
belong to another job, a features channel (folder or model.tar.gz) replaces the image channels, and a
head trained alone is completed only with the backbone its features came from."""
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from conftest import load_artifact
from test_train import job_env

from imgclf.artifact.card import ModelCard
from imgclf.artifact.images import EvalSettings
from imgclf.train import backbone
from imgclf.names import UserError
from imgclf.train import features
from imgclf.train.data import ImageFolderDataset
from imgclf.train.job import run
from imgclf.train.presets import ClassificationPresetEval

LITE = {"arch": "efficientnet_lite0", "pretrained": "true", "recipe": "linear", "image-size": "64", "epochs": "3",
        "lr": "0.05", "augment": "false"}


def history(env):
    return json.loads((env.output_data_dir / "metrics.json").read_text())


def test_head_on_cached_features_matches_training_through_the_backbone(tmp_path, image_folders):
    # one loader process: the order is not the workers'; float32: cached features are float32 on
    # every CPU, where this run could otherwise choose bf16 autocast (a CPU with AVX-512 BF16)
    through = job_env(tmp_path / "through", image_folders, **LITE, **{"num-workers": "1", "amp": "false"})
    cached = job_env(tmp_path / "cached", image_folders, **LITE, features="true")
    assert run(through) == 0 and run(cached) == 0
    for a, b in zip(history(through), history(cached)):
        for metric in ("valid_acc", "test_acc"):
            if metric in a:
                assert abs(a[metric] - b[metric]) <= 0.005, (a, b)
        for metric in ("train_loss", "valid_loss"):
            if metric in a:
                assert a[metric] == pytest.approx(b[metric], rel=1e-3, abs=1e-4)
    assert (cached.checkpoint_dir / "features" / features.MANIFEST).is_file()

    # the artifact is the whole network: the backbone as loaded, the head as trained on features
    net, card = load_artifact(cached.model_dir)
    imagenet = torch.load(backbone.find_imagenet_weights("efficientnet_lite0", None), weights_only=True)
    assert torch.equal(net._conv_stem.weight, imagenet["_conv_stem.weight"])
    ds = ImageFolderDataset(image_folders / "test", card.classes, ClassificationPresetEval.from_settings(card.eval))
    with torch.no_grad():
        correct = sum(int(net(x[None]).argmax(1)) == y for x, y in ds)
    assert correct / len(ds) == pytest.approx(history(cached)[-1]["test_acc"])


def test_features_need_a_frozen_pretrained_backbone(tmp_path, image_folders):
    with pytest.raises(UserError, match="frozen pretrained backbone"):
        run(job_env(tmp_path, image_folders, **{**LITE, "freeze": "false"}, features="true"))


def test_cache_is_reused_by_key_and_recomputed_when_data_change(tmp_path, image_folders):
    identity = {"arch": "a", "classes": ["x", "y"]}
    calls = []

    def compute():
        calls.append(1)
        return {"train": (np.ones((2, 3), np.float32), np.array([0, 1]), 0)}

    data = {"train": [["x/0.jpg", 10, 1]]}
    first = features.ensure(tmp_path / "set", identity, data, compute)
    again = features.ensure(tmp_path / "set", identity, data, compute)
    assert len(calls) == 1 and again.key == first.key
    x, y = again.dataset("train").tensors
    assert x.shape == (2, 3) and y.tolist() == [0, 1]
    features.ensure(tmp_path / "set", identity, {"train": [["x/0.jpg", 10, 2]]}, compute)  # a newer file
    assert len(calls) == 2
    for f in (tmp_path / "set").glob("*.npy"):
        np.load(f, allow_pickle=False)  # plain arrays: nothing to unpickle


def test_features_channel_replaces_the_images_and_is_checked(tmp_path, image_folders):
    extract = job_env(tmp_path / "extract", image_folders, **LITE, **{"extract-features": "true"})
    assert run(extract) == 0
    feature_set = features.load(extract.model_dir)
    assert feature_set.splits == ["train", "valid", "test"] and not (extract.model_dir / "model.pt").exists()

    # as SageMaker hands it over: model.tar.gz of the extract job in the features channel, no image channels
    channel = tmp_path / "channel"
    channel.mkdir()
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
        for f in extract.model_dir.iterdir():
            tar.add(f, f.name)
    trial = job_env(tmp_path / "trial", tmp_path / "no-images", **LITE, features="true")
    trial.channels = {"features": channel}
    assert run(trial) == 0
    assert "test_acc" in history(trial)[-1]
    assert load_artifact(trial.model_dir)[1].classes == ("blue", "green", "red")

    other = job_env(tmp_path / "other", image_folders, **{**LITE, "image-size": "48"}, features="true")
    other.channels["features"] = extract.model_dir
    with pytest.raises(UserError, match="computed for another job"):
        run(other)

    os.remove(next((image_folders / "train" / "red").iterdir()))
    fewer = job_env(tmp_path / "fewer", image_folders, **LITE, features="true")
    fewer.channels["features"] = extract.model_dir
    with pytest.raises(UserError, match="other train images"):
        run(fewer)


def test_a_features_archive_with_a_link_is_refused(tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
        link = tarfile.TarInfo("manifest.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UserError, match="model.tar.gz: 'manifest.json' is a link"):
        features.open_channel(channel, tmp_path / "scratch")
    assert not (tmp_path / "scratch" / "manifest.json").exists()


def test_a_head_alone_is_completed_only_with_the_backbone_its_features_came_from(tmp_path):
    model_dir = tmp_path / "model"
    card = ModelCard(arch="efficientnet_lite0", classes=("a", "b"), eval=EvalSettings.for_image_size(64))
    features.save_head(model_dir, features.HeadAlone(1280, 2), card)
    other = features.FeatureSet(tmp_path, {"identity": {"weights_sha256": "0" * 64}})
    with pytest.raises(UserError, match="not those the features"):
        features.complete_artifact(model_dir, other, None)
    assert (model_dir / features.HEAD_FILE).is_file() and not (model_dir / "model.pt").exists()
