import errno
import json

import pytest

from imgclf.names import UserError
from imgclf.train.contract import (
    TrainingEnvironment,
    decode_value,
    failure_reason,
    hyperparameters_to_argv,
    read_hyperparameters,
    run_job,
)


@pytest.mark.parametrize(
    "raw, expected",
    [('"64"', "64"), ("64", "64"), ('"resnet50"', "resnet50"), ("resnet50", "resnet50"),
     ("0.0173", "0.0173"), ("true", "true"), ('"true"', "true"), (64, "64"), (True, "true")],
)
def test_decode_value_quoted_and_plain_agree(raw, expected):
    assert decode_value(raw) == expected


def test_read_hyperparameters_drops_sagemaker_keys(tmp_path):
    (tmp_path / "hyperparameters.json").write_text(json.dumps({
        "batch-size": '"64"', "lr": "0.0173", "sagemaker_program": "train.py", "_tuning_objective_metric": "x",
    }))
    assert read_hyperparameters(tmp_path, {}) == {"batch-size": "64", "lr": "0.0173"}


def test_read_hyperparameters_falls_back_to_sm_hps(tmp_path):
    assert read_hyperparameters(tmp_path, {"SM_HPS": '{"epochs": 3, "freeze": false}'}) == {
        "epochs": "3", "freeze": "false"}


def test_unknown_hyperparameters_are_named_together():
    with pytest.raises(UserError, match="unknown hyperparameters: bogus, learning-rate"):
        hyperparameters_to_argv({"lr": "1", "bogus": "1", "learning-rate": "2"}, {"lr", "epochs"})
    assert hyperparameters_to_argv({"lr": "0.1", "epochs": "2"}, {"lr", "epochs"}) == [
        "--epochs", "2", "--lr", "0.1"]


def test_environment_from_sagemaker_tree(tmp_path):
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (tmp_path / "input" / "data" / "training").mkdir(parents=True)
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-2", "hosts": ["algo-2", "algo-1"], "network_interface_name": "eth0"}))
    (config / "hyperparameters.json").write_text('{"epochs": "2"}')
    env = TrainingEnvironment.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert env.model_dir == tmp_path / "model"
    assert env.checkpoint_dir == tmp_path / "checkpoints"
    assert env.failure_file == tmp_path / "output" / "failure"
    assert env.channels == {"training": tmp_path / "input" / "data" / "training"}
    assert env.hosts == ["algo-1", "algo-2"] and env.current_host == "algo-2"
    assert env.network_interface == "eth0"
    assert env.hyperparameters == {"epochs": "2"}


def test_sm_variables_override_paths(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    env = TrainingEnvironment.from_env({
        "SAGEMAKER_BASE_DIR": str(tmp_path / "none"), "SM_CHANNEL_TRAINING": str(images),
        "SM_MODEL_DIR": str(tmp_path / "m"), "SM_CHECKPOINT_DIR": str(tmp_path / "c"),
        "SM_HOSTS": '["b", "a"]', "SM_CURRENT_HOST": "a",
    })
    assert env.channels == {"training": images}
    assert (env.model_dir, env.checkpoint_dir) == (tmp_path / "m", tmp_path / "c")
    assert env.hosts == ["a", "b"] and env.current_host == "a"


def test_the_checkpoint_folder_variable_is_the_projects_own_and_the_old_name_still_read(tmp_path):
    base = {"SAGEMAKER_BASE_DIR": str(tmp_path)}
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    assert TrainingEnvironment.from_env({**base, "SM_CHECKPOINT_DIR": old}).checkpoint_dir == tmp_path / "old"
    both = {**base, "SM_CHECKPOINT_DIR": old, "IMGCLF_CHECKPOINT_DIR": new}
    assert TrainingEnvironment.from_env(both).checkpoint_dir == tmp_path / "new"


def test_hyperparameters_json_wins_over_sm_hps(tmp_path):
    (tmp_path / "hyperparameters.json").write_text('{"epochs": "2"}')
    assert read_hyperparameters(tmp_path, {"SM_HPS": '{"epochs": 9, "lr": 0.5}'}) == {"epochs": "2"}


def test_failure_reasons_name_the_kind():
    assert failure_reason(UserError("no images")) == "ClientError: no images"
    assert failure_reason(MemoryError()).startswith("OutOfMemoryError")
    assert failure_reason(RuntimeError("boom\nmore")) == "AlgorithmError: RuntimeError: boom"


def test_run_job_writes_failure_file_and_exit_code(tmp_path):
    failure = tmp_path / "output" / "failure"

    def bad():
        raise UserError("only one class (a)")

    assert run_job(bad, failure) == 2
    assert failure.read_text() == "ClientError: only one class (a)\n"
    assert run_job(lambda: 0, tmp_path / "ok") == 0
    assert not (tmp_path / "ok").exists()


def test_failure_reasons_for_a_full_disk_and_an_unwritable_folder():
    import torch

    with pytest.raises(OSError) as full:
        with open("/dev/full", "wb") as f:  # a device that is always full
            f.write(b"x" * 65536)
            f.flush()
    assert failure_reason(full.value).startswith("DiskFullError: writing a file (No space left on device)")
    assert "volume_size" in failure_reason(full.value)
    read_only = OSError(errno.EROFS, "Read-only file system", "/opt/ml/model/model.pt")
    assert failure_reason(read_only) == ("PermissionError: writing /opt/ml/model/model.pt (Read-only file system); "
                                         "the model, output and checkpoint folders must be writable by the job")
    with pytest.raises(RuntimeError) as short:
        torch.save({"w": torch.zeros(1000)}, "/dev/full")  # torch's own writer: a RuntimeError, not OSError
    assert failure_reason(short.value).startswith("DiskFullError: writing a file ([enforce fail")
    for message, kind in [  # what torch.save said in the image on a read-only mount and on a full tmpfs
        ("[enforce fail at inline_container.cc:747] . open file failed with strerror: Read-only file system",
         "PermissionError"),
        ("[enforce fail at inline_container.cc:672] . unexpected pos 950336 vs 950232", "DiskFullError"),
        ("File /opt/ml/model/model.pt cannot be opened.", "PermissionError"),
    ]:
        assert failure_reason(RuntimeError(message)).startswith(f"{kind}: writing a file ({message});")
    assert failure_reason(RuntimeError("shape mismatch")) == "AlgorithmError: RuntimeError: shape mismatch"
