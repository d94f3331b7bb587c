"""smdebug tensors from a real training job, read back with `smdebug.trials.create_trial`; a hook
that cannot work never stops training."""
import json
import logging
import math
import sys

import pytest
from test_train import job_env

from imgclf.train.job import run

smdebug_trials = pytest.importorskip("smdebug.trials")


def test_hyperparameters_save_tensors_of_a_frozen_backbone_job(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders, freeze="true", **{"debug-collections": "losses,weights,gradients,biases",
                                                             "debug-save-interval": "2"})
    assert run(env) == 0
    trial = smdebug_trials.create_trial(str(env.output_data_dir / "tensors"))
    names = set(trial.tensor_names())
    assert {"gradient/ResNet_fc.weight", "gradient/ResNet_fc.bias", "ResNet_fc.weight", "ResNet_conv1.weight"} <= names
    assert not any(n.startswith("gradient/") and "fc" not in n for n in names)  # the frozen backbone has none
    loss = next(n for n in names if "Loss" in n)
    assert trial.steps()[:3] == [0, 2, 4]
    assert all(math.isfinite(float(trial.tensor(loss).value(s))) for s in trial.tensor(loss).steps())
    assert trial.tensor("gradient/ResNet_fc.weight").value(2).shape == (3, 512)


def test_debughookconfig_json_from_sagemaker_decides_where_and_what(tmp_path, image_folders):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    local_path = tmp_path / "opt-ml-output-tensors"
    (config_dir / "debughookconfig.json").write_text(json.dumps({
        "LocalPath": str(local_path), "S3OutputPath": "s3://bucket/job/debug-output",
        "HookParameters": {"save_interval": "3"},
        "CollectionConfigurations": [{"CollectionName": "losses"}, {"CollectionName": "gradients"}]}))
    env = job_env(tmp_path, image_folders, freeze="false", epochs="1")
    env.config_dir = config_dir
    assert run(env) == 0
    trial = smdebug_trials.create_trial(str(local_path))
    names = trial.tensor_names()
    assert "gradient/ResNet_conv1.weight" in names  # fine-tuning: the backbone has gradients too
    assert trial.tensor("gradient/ResNet_conv1.weight").steps() == [0, 3]
    assert not (env.output_data_dir / "tensors").exists()


@pytest.mark.parametrize("break_smdebug", ["missing", "hook raises"])
def test_a_failing_hook_is_logged_and_training_goes_on(tmp_path, image_folders, monkeypatch, caplog, break_smdebug):
    if break_smdebug == "missing":
        monkeypatch.setitem(sys.modules, "smdebug", None)
        expected = "ModuleNotFoundError"
    else:
        from smdebug.pytorch import Hook

        def broken(*args, **kwargs):
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")

        monkeypatch.setattr(Hook, "forward_hook", broken)
        expected = "RuntimeError: cannot register a hook"
    env = job_env(tmp_path, image_folders, epochs="1", **{"debug-collections": "losses,gradients"})
    with caplog.at_level(logging.WARNING):
        assert run(env) == 0
    stopped = [r for r in caplog.records if "saving tensors with smdebug stopped (training goes on)" in r.getMessage()]
    assert len(stopped) == 1 and expected in stopped[0].getMessage()
    assert (env.model_dir / "model.pt").is_file()
