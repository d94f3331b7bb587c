"""The training job end to end on tiny images: artifact, metrics, failures, SIGTERM and resume, DDP."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, load_artifact, make_image_folder

from imgclf.artifact import network
from imgclf.train import backbone
from imgclf.names import UserError
from imgclf.train.contract import TrainingEnvironment
from imgclf.train.data import ImageFolderDataset
from imgclf.train.engine import TrainState
from imgclf.train.job import parse_hyperparameters, run
from imgclf.train.presets import ClassificationPresetEval

TINY = {"arch": "resnet18", "pretrained": "false", "image-size": "32", "batch-size": "8", "epochs": "2",
        "num-workers": "0", "log-interval": "0", "serving-formats": "false"}  # test_export covers those


def job_env(tmp_path: Path, data: Path, **hyperparameters) -> TrainingEnvironment:
    channels = {"training": data / "train", "validation": data / "valid", "test": data / "test"}
    return TrainingEnvironment(
        model_dir=tmp_path / "model", output_data_dir=tmp_path / "output" / "data", output_dir=tmp_path / "output",
        checkpoint_dir=tmp_path / "checkpoints", channels={k: v for k, v in channels.items() if v.exists()},
        hyperparameters={**TINY, **hyperparameters},
    )


def sm_environ(env: TrainingEnvironment) -> dict[str, str]:
    """The SM_* variables that put `imgclf-train` on the same paths as `env`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    environ.update(SAGEMAKER_BASE_DIR=str(env.output_dir.parent / "none"), SM_MODEL_DIR=str(env.model_dir),
                   SM_OUTPUT_DIR=str(env.output_dir), SM_OUTPUT_DATA_DIR=str(env.output_data_dir),
                   SM_CHECKPOINT_DIR=str(env.checkpoint_dir), SM_HPS=json.dumps(env.hyperparameters))
    environ.update({f"SM_CHANNEL_{k.upper()}": str(v) for k, v in env.channels.items()})
    return environ


def train_cli(env: TrainingEnvironment, extra_env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgclf.train.job"], env={**sm_environ(env), **(extra_env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_quoted_and_plain_hyperparameters_type_the_same():
    quoted = parse_hyperparameters({"batch-size": "64", "lr": "0.0173", "freeze": "false", "arch": "resnet34"})
    assert (quoted.batch_size, quoted.lr, quoted.freeze, quoted.arch) == (64, 0.0173, False, "resnet34")


@pytest.mark.parametrize("hps, message", [
    ({"batch-size": "sixty"}, "batch-size"), ({"arch": "vgg"}, "arch"), ({"momentum": "1.5"}, "momentum"),
    ({"learning_rate": "0.1"}, "unknown hyperparameters: learning_rate"), ({"freeze": "maybe"}, "boolean"),
])
def test_bad_hyperparameters_are_user_errors(hps, message):
    with pytest.raises(UserError, match=message):
        parse_hyperparameters(hps)


def test_trains_and_writes_an_artifact_that_reproduces_test_accuracy(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders)
    assert run(env) == 0
    history = json.loads((env.output_data_dir / "metrics.json").read_text())
    assert [h.get("epoch") for h in history[:2]] == [1, 2]
    test_acc = history[-1]["test_acc"]

    net, card = load_artifact(env.model_dir)
    assert card.classes == ("blue", "green", "red") and card.arch == "resnet18"
    ds = ImageFolderDataset(image_folders / "test", card.classes, ClassificationPresetEval.from_settings(card.eval))
    with torch.no_grad():
        correct = sum(int(net(x[None]).argmax(1)) == y for x, y in ds)
    assert correct / len(ds) == pytest.approx(test_acc)
    assert json.loads((env.output_data_dir / "args.json").read_text())["arch"] == "resnet18"


def test_without_validation_channel_a_split_is_held_out(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders, epochs="1")
    del env.channels["validation"]
    assert run(env) == 0
    assert (env.model_dir / "model.pt").is_file()


def test_transfer_from_pretrained_channel_with_frozen_backbone(tmp_path, image_folders):
    imagenet_net = network.create_model("resnet18", 1000)
    (tmp_path / "pretrained").mkdir()
    torch.save(imagenet_net.state_dict(), tmp_path / "pretrained" / "resnet18.pth")
    env = job_env(tmp_path, image_folders, pretrained="true", freeze="true", epochs="1")
    env.channels["pretrained"] = tmp_path / "pretrained"
    assert run(env) == 0
    net, _ = load_artifact(env.model_dir)
    assert torch.equal(net.layer1[0].conv1.weight, imagenet_net.layer1[0].conv1.weight)  # frozen: unchanged
    assert not torch.equal(net.fc.weight[:, :8], imagenet_net.fc.weight[:3, :8])


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path, image_folders, monkeypatch):
    monkeypatch.setenv(backbone.WEIGHTS_DIR_ENV, str(tmp_path / "nothing"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty download cache
    monkeypatch.setattr(backbone, "weights_url", lambda arch: f"http://127.0.0.1:9/{arch}-0123abcd.pth")  # unreachable
    with pytest.raises(UserError, match="pretrained' channel"):
        run(job_env(tmp_path, image_folders, pretrained="true"))


@pytest.mark.parametrize("case, reason", [
    ("no_training", "ClientError: no training channel"),
    ("one_class", "ClientError: only one class"),
    ("bad_hp", "ClientError: bad hyperparameter: argument --epochs"),
])
def test_failed_job_writes_reason_and_exits_non_zero(tmp_path, case, reason):
    data = tmp_path / "data"
    if case == "one_class":
        make_image_folder(data / "train", per_class=2, classes={"only": (1, 2, 3)})
    elif case == "bad_hp":
        make_image_folder(data / "train", per_class=2)
    env = job_env(tmp_path, data, **({"epochs": "two"} if case == "bad_hp" else {}))
    proc = train_cli(env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert (env.output_dir / "failure").read_text().startswith(reason)
    assert "Traceback" not in (env.output_dir / "failure").read_text()


def test_early_stopping_counts_epochs_without_improvement():
    state = TrainState()
    for loss in (1.0, 0.9, 0.95, 0.91):
        state.end_epoch(loss)
    assert (state.epoch, state.best_valid_loss, state.epochs_without_improvement) == (4, 0.9, 2)
    assert state.should_stop_early(2) and not state.should_stop_early(3) and not state.should_stop_early(0)


def stop_with_sigterm(tmp_path: Path, at: str) -> tuple[TrainingEnvironment, str]:
    """A 3-epoch `imgclf-train` process sent SIGTERM once it logs the step line `at`
    (e.g. "epoch=2 step=2/"); its environment and whole output, after checking it exited 143."""
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=60, size=(96, 96))
    make_image_folder(data / "valid", per_class=2, seed=1)
    env = job_env(tmp_path, data, epochs="3", **{"image-size": "64", "batch-size": "4", "log-interval": "1"})
    proc = train_cli(env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if at in line:
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    return env, out


def test_sigterm_checkpoints_and_a_restart_resumes_to_the_same_epoch_count(tmp_path):
    env, out = stop_with_sigterm(tmp_path, "epoch=2 step=2/")  # epoch 1 done, epoch 2 under way
    assert "stopped by SIGTERM in epoch 2" in out
    saved = torch.load(env.checkpoint_dir / "checkpoint.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1
    assert not (env.model_dir / "model.pt").exists()

    proc = train_cli(env)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert "resumed from" in out and "after epoch 1" in out
    epochs = [h["epoch"] for h in json.loads((env.output_data_dir / "metrics.json").read_text()) if "epoch" in h]
    assert epochs == [1, 2, 3]
    assert "epoch=1 train_loss" not in out  # epoch 1 was not trained again


def test_checkpoint_of_another_job_is_refused(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders, epochs="1")
    assert run(env) == 0
    env.hyperparameters["arch"] = "resnet34"
    with pytest.raises(UserError, match="checkpoint .* is for resnet18"):
        run(env)


def test_two_processes_train_with_ddp_on_cpu(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders, epochs="2")
    dist = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [train_cli(env, {**dist, "RANK": str(r), "LOCAL_RANK": "0"}) for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "rank 0 of 2 (gloo)" in outs[0] and "rank 1 of 2 (gloo)" in outs[1]
    assert "epoch=2 train_loss" in outs[0] and "train_loss" not in outs[1]  # rank 0 reports the reduced metrics
    net, card = load_artifact(env.model_dir)
    assert card.classes == ("blue", "green", "red")
    assert json.loads((env.model_dir / "evaluation.json").read_text())["images"] == 12  # both ranks' test images
