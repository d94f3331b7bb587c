"""TensorBoard event files of a job that SageMaker's TensorBoardOutputConfig asks for, read back
with TensorBoard's own event reader."""
import json

import pytest
from test_train import job_env

from imgclf import debug
from imgclf.tracking import with_tracking
from imgclf.tracking.settings import TENSORBOARD_LOCAL_PATH, tensorboard_dir
from imgclf.train.job import main, parse_hyperparameters

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_job_with_tensorboardoutputconfig_writes_loss_epochs_and_system_metrics(image_folders, tmp_path):
    env = job_env(tmp_path, image_folders, epochs="2", **{"profiler-interval-ms": "100"})
    env.config_dir = tmp_path / "config"
    env.config_dir.mkdir()
    logdir = tmp_path / "tensorboard"
    (env.config_dir / "tensorboardoutputconfig.json").write_text(json.dumps({"LocalPath": str(logdir),
                                                                             "S3OutputPath": "s3://b/tb"}))
    args = parse_hyperparameters(env.hyperparameters)
    assert main(args, env, callbacks=with_tracking(debug.callbacks(args, env), args, env, {})) == 0

    series = scalars(logdir)
    steps_per_epoch = -(-36 // 8) - 1  # 36 training images in batches of 8, the last partial one dropped
    loss = series["train/loss"]
    assert [s for s, _ in loss] == list(range(1, 2 * steps_per_epoch + 1))
    assert all(v > 0 for _, v in loss)
    assert [s for s, _ in series["epoch/valid_acc"]] == [1, 2]
    assert all(0 <= v <= 1 for _, v in series["epoch/valid_acc"])
    history = json.loads((env.output_data_dir / "metrics.json").read_text())
    assert series["epoch/valid_acc"][1][1] == pytest.approx(history[1]["valid_acc"])
    for tag in ("epoch/train_loss", "epoch/lr", "epoch/images_per_sec", "test/test_acc", "system/cpu",
                "system/memory"):
        assert series[tag], tag
    assert len(series["system/cpu"]) >= 2


def test_where_event_files_go(tmp_path):
    args = parse_hyperparameters({"tensorboard-dir": str(tmp_path / "hp")})
    env = job_env(tmp_path, tmp_path)
    assert tensorboard_dir(args, env) == tmp_path / "hp"
    args = parse_hyperparameters({})
    assert tensorboard_dir(args, env) is None  # no config dir: not asked for
    env.config_dir = tmp_path
    assert tensorboard_dir(args, env) is None
    (tmp_path / "tensorboardoutputconfig.json").write_text('{"S3OutputPath": "s3://b/tb"}')
    assert str(tensorboard_dir(args, env)) == TENSORBOARD_LOCAL_PATH  # SageMaker's default LocalPath
