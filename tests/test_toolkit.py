"""`train` through sagemaker-training's trainer and imgclf.train.toolkit, outside a container: the launch
plan, imgclf-train alone and under torchrun, failure file and exit code, SIGTERM and resume under
torchrun, and a user's own script. The jobs are tiny (resnet18 from random weights, 32 pixels)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_image_folder

from imgclf.names import UserError
from imgclf.train.toolkit import TRAIN_PROGRAM, plan, wait_for_hosts

TINY = {"arch": "resnet18", "pretrained": "false", "image-size": "32", "batch-size": "8", "epochs": "1",
        "num-workers": "0", "serving-formats": "false", "profiler": "false", "rules": "false"}
USER_SCRIPT = ROOT / "tests" / "user_script"
TORCH_DISTRIBUTED = {"sagemaker_torch_distributed_enabled": True}


def test_the_default_job_is_imgclf_train_alone_or_under_torchrun():
    assert plan(None, {}, {}, ["algo-1"], num_gpus=0) == plan("", {"epochs": 3}, {}, ["algo-1"], 0)
    single = plan(None, {"epochs": 3}, {}, ["algo-1"], num_gpus=0)
    assert (single.program, single.args, single.processes_per_host, single.torchrun) == (TRAIN_PROGRAM, [], 1, False)
    assert not single.user_script
    two_hosts = plan(None, {"processes-per-host": 2}, {}, ["algo-1", "algo-2"], num_gpus=0)
    assert (two_hosts.processes_per_host, two_hosts.torchrun) == (2, True)
    gpus = plan(None, {"processes-per-host": 2}, {}, ["algo-1"], num_gpus=4)  # one process per GPU
    assert (gpus.processes_per_host, gpus.torchrun) == (4, True)
    assert plan(None, {}, TORCH_DISTRIBUTED, ["algo-1"], num_gpus=0).torchrun  # as the estimator asked


def test_a_user_script_runs_as_in_the_pytorch_container():
    alone = plan("train.py", {"epochs": 3, "processes-per-host": 2}, {}, ["algo-1", "algo-2"], num_gpus=0)
    assert (alone.program, alone.args, alone.torchrun, alone.user_script) == ("train.py", ["--epochs", "3"], False, True)
    ranks = plan("train.py", {"epochs": 3, "processes-per-host": 2}, TORCH_DISTRIBUTED, ["a", "b"], num_gpus=0)
    assert (ranks.args, ranks.processes_per_host, ranks.torchrun) == (["--epochs", "3"], 2, True)


@pytest.mark.parametrize("hyperparameters, framework, message", [
    ({"processes-per-host": 0}, {}, "processes-per-host=0 is out of range \\[1, inf\\)"),
    ({"processes-per-host": "two"}, {}, "argument --processes-per-host: invalid int value: 'two'"),
    ({}, {"sagemaker_mpi_enabled": True}, "torch_distributed only, not sagemaker_mpi_enabled"),
])
def test_bad_launch_settings_are_user_errors(hyperparameters, framework, message):
    with pytest.raises(UserError, match=message):
        plan("train.py", hyperparameters, framework, ["algo-1"], num_gpus=0)


def test_waiting_for_a_host_that_never_resolves_ends_with_its_name():
    wait_for_hosts(["localhost"], timeout_s=0)
    with pytest.raises(RuntimeError, match="host algo-9.invalid did not resolve within 1 s"):
        wait_for_hosts(["localhost", "algo-9.invalid"], timeout_s=1)


# ---------------------------------------------------------------------------------------------
# `train` as the image runs it, here with SAGEMAKER_BASE_DIR


def job_dir(root: Path, hyperparameters: dict, channels=("training", "validation"), **images) -> Path:
    """An /opt/ml tree as SageMaker writes it, output folder included (the trainer needs it)."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "localhost", "hosts": ["localhost"]}))
    (config / "inputdataconfig.json").write_text(json.dumps({c: {"TrainingInputMode": "File"} for c in channels}))
    (root / "output").mkdir()
    for seed, channel in enumerate(channels):
        make_image_folder(root / "input" / "data" / channel, seed=seed, **{"per_class": 6, "size": (40, 40), **images})
    return root


def train(ml: Path, **kwargs) -> subprocess.Popen:
    """sagemaker-training's `train` command, which calls imgclf.train.toolkit:main."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "RANK", "WORLD_SIZE",
                                                                    "LOCAL_", "MASTER_"))}
    bin_dir = str(Path(sys.executable).parent)  # torchrun beside this Python
    env.update(SAGEMAKER_BASE_DIR=str(ml), SAGEMAKER_TRAINING_MODULE="imgclf.train.toolkit:main",
               PATH=f"{bin_dir}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([str(Path(bin_dir) / "train")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.parametrize("per_host, hyperparameters, code, reason", [
    (1, {"epochs": "two"}, 2, "ClientError: bad hyperparameter: argument --epochs: invalid int value: 'two'"),
    (2, {"epochs": "two"}, 1, "ClientError: bad hyperparameter: argument --epochs: invalid int value: 'two'"),
    (1, {"processes-per-host": "0"}, 2, "ClientError: bad hyperparameter: processes-per-host=0 is out of range [1, inf)"),
])
def test_failure_file_keeps_our_reason(tmp_path, per_host, hyperparameters, code, reason):
    """The trainer writes a failure file of its own ("Framework Error: <traceback>") unless one is
    there: imgclf-train's reason is the one kept, one process or several under torchrun."""
    ml = job_dir(tmp_path, {**TINY, "processes-per-host": str(per_host), **hyperparameters})
    (ml / "output" / "failure").write_text("a reason of an earlier run")
    out = train(ml).communicate(timeout=300)[0]
    assert (ml / "output" / "failure").read_text().strip() == reason, out[-3000:]
    assert not (ml / "output" / "success").exists()
    assert f"Encountered exit_code {code}" in out, out[-3000:]


def test_imgclf_train_under_torchrun_trains_stops_on_sigterm_and_resumes(tmp_path):
    """Two processes on one host through torchrun: SIGTERM to `train` (PID 1 in the container)
    reaches both ranks through torchrun, the checkpoint of the last epoch stays, a rerun resumes
    from it to the same epoch count."""
    ml = job_dir(tmp_path, {**TINY, "processes-per-host": "2", "epochs": "3", "image-size": "64",
                            "batch-size": "4", "log-interval": "1"}, per_class=30, size=(96, 96))
    proc = train(ml)
    lines = []
    for line in proc.stdout:  # epoch 1 done and checkpointed, epoch 2 under way
        lines.append(line)
        if "epoch=2 step=2/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=180)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "rank 0 of 2 (gloo)" in out and "rank 1 of 2 (gloo)" in out
    assert "stopped by SIGTERM in epoch 2" in out
    assert (ml / "output" / "failure").read_text().startswith("stopped by SIGTERM")
    assert torch.load(ml / "checkpoints" / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 1
    assert not (ml / "model" / "model.pt").exists()

    proc = train(ml)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "resumed from" in out and "after epoch 1" in out and "epoch=1 train_loss" not in out
    history = json.loads((ml / "output" / "data" / "metrics.json").read_text())
    assert [h["epoch"] for h in history if "epoch" in h] == [1, 2, 3]
    assert (ml / "output" / "success").exists() and not (ml / "output" / "failure").exists()


@pytest.mark.parametrize("then", ["end", "fail", "sigterm"])
def test_a_user_script_runs_with_its_arguments_under_torchrun(tmp_path, then):
    """sagemaker_program and sagemaker_submit_directory, as the SDK's PyTorch estimator sends them,
    with distribution={"torch_distributed": {"enabled": True}}: torchrun's ranks see the arguments
    and SM_* variables; a failing script fails the job as in AWS's container (sagemaker-training's
    reason with the script's error, exit 1); SIGTERM reaches every rank."""
    ml = job_dir(tmp_path, {"epochs": "3", "then": then, "processes-per-host": "2",
                            "sagemaker_program": '"print_rank.py"', "sagemaker_submit_directory": json.dumps(
                                str(USER_SCRIPT)), "sagemaker_torch_distributed_enabled": "true"}, channels=())
    proc = train(ml)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        # the ranks share one pipe and print a line in two writes: count in the text, not per line
        if then == "sigterm" and "".join(lines).count("user script: rank") == 2:
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    for rank in (0, 1):
        assert then == "fail" or f"user script: rank {rank} of 2 epochs=3 model_dir={ml / 'model'}" in out, out[-3000:]
        assert (then == "sigterm") == (f"user script: rank {rank} got SIGTERM" in out), out[-3000:]
    assert proc.returncode == (0 if then == "end" else 1), out[-3000:]
    if then == "fail":
        reason = (ml / "output" / "failure").read_text()  # both ranks' tracebacks, possibly interleaved
        assert reason.startswith("ExecuteUserScriptError") and "ValueError" in reason
        assert "user script failed on purpose" in reason
    assert (ml / "code" / "print_rank.py").exists()  # the submit directory, copied as SageMaker does
