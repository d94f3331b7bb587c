"""model.tar.gz extraction refuses what could escape the destination or is not a plain file."""
import io
import tarfile

import pytest

from imgclf.artifact.archive import UnsafeArchive, packed_model, safe_extract


def make_tar(path, members):
    """members: (TarInfo fields, data) pairs."""
    with tarfile.open(path, "w:gz") as tar:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def test_plain_files_and_folders_are_extracted(tmp_path):
    archive = make_tar(tmp_path / "model.tar.gz", [
        ({"name": "model.json", "mode": 0o4755}, b"{}"),
        ({"name": "code", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
        ({"name": "code/notes.txt"}, b"hi"),
    ])
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "model.json").read_text() == "{}" and (out / "code" / "notes.txt").read_text() == "hi"
    assert (out / "model.json").stat().st_mode & 0o7000 == 0  # no set-id bits


@pytest.mark.parametrize("member, words", [
    ({"name": "../evil.py"}, "outside"),
    ({"name": "/etc/cron.d/evil"}, "outside"),
    ({"name": "a/../../evil"}, "outside"),
    ({"name": "link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "link"),
    ({"name": "hard", "type": tarfile.LNKTYPE, "linkname": "model.json"}, "link"),
    ({"name": "dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "device"),
    ({"name": "fifo", "type": tarfile.FIFOTYPE}, "FIFO"),
], ids=["dotdot", "absolute", "nested-dotdot", "symlink", "hardlink", "device", "fifo"])
def test_unsafe_members_refuse_the_whole_archive(tmp_path, member, words):
    archive = make_tar(tmp_path / "model.tar.gz", [({"name": "model.json"}, b"{}"), (member, None)])
    with pytest.raises(UnsafeArchive, match=words):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "model.json").exists()  # nothing written
    assert not (tmp_path / "evil.py").exists()


def test_not_an_archive(tmp_path):
    (tmp_path / "model.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(UnsafeArchive, match="not a readable tar"):
        safe_extract(tmp_path / "model.tar.gz", tmp_path / "out")


def test_a_folder_is_packed_until_the_model_writes_its_card(tmp_path):
    from imgclf.artifact.card import ModelCard, write_card
    from imgclf.artifact.images import EvalSettings

    archive = make_tar(tmp_path / "model.tar.gz", [({"name": "weights"}, b"0")])
    assert packed_model(tmp_path) == archive  # only the archive: serving extracts it
    write_card(tmp_path, ModelCard("resnet18", ("a", "b"), EvalSettings.for_image_size(32)))
    assert packed_model(tmp_path) is None  # an extracted artifact beside a stray archive is used as it is
    assert packed_model(tmp_path / "empty") is None
