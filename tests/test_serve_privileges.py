"""Staging the model for an unprivileged server, and the choice of user. (The drop itself is
checked in the image with `docker top`: tests/test_image_security.py.)"""
import io
import os
import tarfile

import pytest
from conftest import load_artifact
from serve_support import make_artifact

from imgclf.artifact.archive import UnsafeArchive
from imgclf.serve import privileges
from imgclf.serve.privileges import serving_user, stage_model


def test_stage_copies_plain_files_and_leaves_links_out(tmp_path):
    src = make_artifact(tmp_path / "model")
    (src / "extra").mkdir()
    (src / "extra" / "labels.txt").write_text("a\n")
    (src / "secret-link").symlink_to("/etc/shadow")
    out = stage_model(src, tmp_path / "run" / "model")
    assert sorted(p.name for p in out.rglob("*")) == ["extra", "labels.txt", "model.json", "model.pt"]
    model, card = load_artifact(out)
    assert card.classes == ("blue", "green", "red")


def test_stage_extracts_a_model_tar_gz_safely(tmp_path):
    src = make_artifact(tmp_path / "artifact")
    packed = tmp_path / "model"
    packed.mkdir()
    with tarfile.open(packed / "model.tar.gz", "w:gz") as tar:
        for name in ("model.json", "model.pt"):
            tar.add(src / name, arcname=name)
    assert load_artifact(stage_model(packed, tmp_path / "run" / "model"))[1].arch == "resnet18"
    with tarfile.open(packed / "model.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escape")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeArchive):
        stage_model(packed, tmp_path / "run2" / "model")


def test_serving_user(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert serving_user("root") is None  # asked to stay root
    assert serving_user("nobody").pw_name == "nobody"
    with pytest.raises(RuntimeError, match="does not exist"):
        serving_user("no-such-user-here")
    monkeypatch.setattr(privileges, "DEFAULT_USER", "no-such-user-here")
    assert serving_user(None) is None  # the image's user, missing outside the image: stay, with a warning
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert serving_user("nobody") is None  # not root: nothing to drop
