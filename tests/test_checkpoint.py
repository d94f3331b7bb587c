"""Checkpoints: digest, rotation, a corrupt or truncated latest falling back to the previous one,
a full disk, and SIGTERM at random steps, repeated, ending at the same epoch count."""
import errno
import json
import logging
import random
import signal

import pytest
import torch
from conftest import load_artifact, make_image_folder
from test_train import job_env, train_cli

from imgclf.artifact.card import ModelCard
from imgclf.artifact.images import EvalSettings
from imgclf.names import UserError
from imgclf.train.checkpoint import digest_file, load_checkpoint, previous, save_checkpoint
from imgclf.train.contract import failure_reason
from imgclf.train.engine import TrainState
from imgclf.train.job import run

CARD = ModelCard("resnet18", ("a", "b"), EvalSettings.for_image_size(32))


def parts(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, torch.amp.GradScaler("cpu", enabled=False)


def save(path, epoch, seed=0):
    model, optimizer, scaler = parts(seed)
    save_checkpoint(path, model, optimizer, scaler, TrainState(epoch=epoch), CARD)
    return model


def restore(path):
    model, optimizer, scaler = parts(seed=99)
    state = load_checkpoint(path, model, optimizer, scaler, CARD)
    return state, model


def test_saves_with_a_digest_and_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, 1, seed=1)
    latest = save(path, 2, seed=2)
    assert digest_file(path).is_file() and previous(path).is_file() and digest_file(previous(path)).is_file()
    state, model = restore(path)
    assert state["epoch"] == 2 and torch.equal(model.weight, latest.weight)
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "truncate without digest", "empty", "not torch"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    path = tmp_path / "checkpoint.pt"
    earlier = save(path, 1, seed=1)
    save(path, 2, seed=2)
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0xFF
    elif damage.startswith("truncate"):
        data = data[: len(data) // 2]
        if damage.endswith("without digest"):
            digest_file(path).unlink()  # e.g. killed between the two renames: torch.load must catch it
    elif damage == "empty":
        data = b""
    else:
        data = b"PK\x03\x04 this is not a checkpoint"
        digest_file(path).unlink()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        state, model = restore(path)
    assert state["epoch"] == 1 and torch.equal(model.weight, earlier.weight)
    assert "corrupt or truncated" in caplog.text and "previous checkpoint" in caplog.text


def test_no_usable_checkpoint_starts_from_scratch(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    save(path, 1)
    save(path, 2)
    for p in (path, previous(path)):
        p.write_bytes(p.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        assert restore(path)[0] is None
    assert "training from the start" in caplog.text


def test_a_full_disk_keeps_the_earlier_checkpoints_and_names_the_cause(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, 1)
    (tmp_path / "checkpoint.tmp").symlink_to("/dev/full")  # the next write lands on a full device
    with pytest.raises(OSError) as e:
        save(path, 2)
    assert e.value.errno == errno.ENOSPC
    assert failure_reason(e.value).startswith(f"DiskFullError: writing {tmp_path / 'checkpoint.tmp'} (No space")
    assert restore(path)[0]["epoch"] == 1


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, 1)
    model, optimizer, scaler = parts()
    with pytest.raises(UserError, match="is for resnet18 with 2 classes"):
        load_checkpoint(path, model, optimizer, scaler, ModelCard("resnet34", ("a", "b"), CARD.eval))


def test_training_resumes_from_the_previous_checkpoint_when_the_latest_is_corrupt(tmp_path, image_folders, caplog):
    env = job_env(tmp_path, image_folders, epochs="2")
    assert run(env) == 0
    latest = env.checkpoint_dir / "checkpoint.pt"
    assert torch.load(previous(latest), weights_only=True)["state"]["epoch"] == 1
    latest.write_bytes(latest.read_bytes()[:-1000])  # truncated, e.g. a copy from S3 cut short
    env.hyperparameters["epochs"] = "3"
    with caplog.at_level(logging.INFO):
        assert run(env) == 0
    assert "resuming from the previous checkpoint" in caplog.text and "after epoch 1" in caplog.text
    epochs = [h["epoch"] for h in json.loads((env.output_data_dir / "metrics.json").read_text()) if "epoch" in h]
    assert epochs == [1, 2, 3]


@pytest.mark.slow
def test_sigterm_at_random_steps_repeated_ends_at_the_same_epoch_count(tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=20, size=(64, 64))
    make_image_folder(data / "valid", per_class=2, seed=1)
    env = job_env(tmp_path, data, epochs="3", **{"image-size": "32", "batch-size": "4", "log-interval": "1"})
    steps_per_epoch = 60 // 4
    interrupted = 0
    for attempt in range(3):
        stop_at = rng.randint(1, 3 * steps_per_epoch)  # a global step, counted across epochs and restarts
        proc = train_cli(env)
        seen = 0
        for line in proc.stdout:
            if " step=" in line:
                seen += 1
                if seen == stop_at:
                    proc.send_signal(signal.SIGTERM)
                    break
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode in (0, 128 + signal.SIGTERM), f"seed {seed}, attempt {attempt}:\n{out}"
        if proc.returncode == 0:
            break
        interrupted += 1
        assert "stopped by SIGTERM" in out, f"seed {seed}"
        saved = torch.load(env.checkpoint_dir / "checkpoint.pt", weights_only=True)  # valid after every stop
        assert 0 <= saved["state"]["epoch"] < 3
    proc = train_cli(env)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, f"seed {seed}:\n{out}"
    epochs = [h["epoch"] for h in json.loads((env.output_data_dir / "metrics.json").read_text()) if "epoch" in h]
    assert epochs == [1, 2, 3], f"seed {seed}, {interrupted} interruptions"
    net, card = load_artifact(env.model_dir)
    assert card.classes == ("blue", "green", "red") and net(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
