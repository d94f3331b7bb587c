"""The profiler and rules in a real training job: what the job writes, what it logs as rules fire,
the hyperparameters and profilerconfig.json that steer it, and that it never stops training."""
import json
import logging
from argparse import Namespace

import pytest
from test_train import job_env

from imgclf.debug import monitor
from imgclf.debug.jobdata import JobData
from imgclf.debug.rules import VanishingGradient
from imgclf.debug.statistics import ActivationVariances
from imgclf.names import PROFILER_INTERVAL_MS, UserError
from imgclf.train.job import parse_hyperparameters, run


@pytest.fixture(scope="module")
def profiled_job(tmp_path_factory):
    """One short job (2 epochs of 4 steps) with a 100 ms sampling interval and steps 2-3 traced."""
    from conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("profiled")
    for split, n, seed in (("train", 12, 0), ("valid", 4, 1), ("test", 4, 2)):
        make_image_folder(tmp / "data" / split, per_class=n, seed=seed)
    env = job_env(tmp, tmp / "data", **{"profiler-interval-ms": "100", "profiler-trace-steps": "2-3"})
    handler, logger = _ListHandler(), logging.getLogger("imgclf")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert run(env) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return env, handler.lines


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_the_job_writes_its_profile_and_report(profiled_job):
    env, _ = profiled_job
    data = JobData.from_dict(json.loads((env.output_data_dir / "debug" / "profile-localhost-rank0.json").read_text()))
    assert len(data.steps) == 8 and data.steps.epoch == [1] * 4 + [2] * 4
    assert all(t > 0 for t in data.steps.forward + data.steps.backward) and len(data.losses) == 8
    assert data.start < data.loop_start < data.loop_end < data.end
    assert len(data.system) >= 1 and all(0 <= c <= 100 for c in data.system.cpu)
    assert [e["epoch"] for e in data.epochs] == [1, 2] and "test_acc" in data.test
    assert len(data.rules) == 14 and {r["name"] for r in data.rules} >= {"VanishingGradient", "StepOutlier"}
    assert data.activation_variances and data.gradient_means and data.gradient_ranges
    trace = env.output_data_dir / data.traces[0]
    assert trace.name == "trace-localhost-rank0-steps2-3.json" and json.loads(trace.read_text())["traceEvents"]
    assert (env.output_data_dir / "profiler-report.html").read_text().startswith("<!DOCTYPE html>")


def test_activation_variances_come_from_training_steps_only():
    """Evaluation and, after the last epoch, the export's tracing and calibration run the same
    ReLUs: the monitor turns recording on at an epoch's start and off at its evaluation."""
    import torch
    import torchvision

    model = torchvision.models.resnet18(num_classes=2).eval()
    variances = ActivationVariances(model, r".*_relu_input")
    x = torch.randn(1, 3, 32, 32)
    model(x)
    assert variances.take() == {}
    variances.training = True
    model(x)
    assert len(variances.take()) == 17  # the stem's ReLU and each of 8 blocks' two calls of its one ReLU
    variances.remove()


def test_rule_verdicts_are_logged_as_they_fire(profiled_job):
    _, lines = profiled_job
    # num-workers 0: no data loader processes, below the Dataloader rule's 70 % of the cores
    fired = next(i for i, line in enumerate(lines) if line.startswith("rule Dataloader triggered"))
    second_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch=2 "))
    assert fired < second_epoch


def test_bad_rule_parameters_fail_the_job_before_training(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders, **{"rule-parameters": '{"Overfit": {"ratio": 0.2}}'})
    with pytest.raises(UserError, match="rule Overfit has no parameter ratio"):
        run(env)
    assert not env.model_dir.exists()


def test_profiler_and_rules_off_write_nothing(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders, epochs="1", profiler="false", rules="false")
    assert run(env) == 0
    assert not (env.output_data_dir / "debug").exists() and not (env.output_data_dir / "profiler-report.html").exists()


def test_a_failing_rule_turns_the_monitor_off_and_training_goes_on(tmp_path, image_folders, monkeypatch, caplog):
    def broken(self, data, final=False):
        raise ZeroDivisionError("a bug in a rule")

    monkeypatch.setattr(VanishingGradient, "check", broken)
    env = job_env(tmp_path, image_folders, epochs="1")
    with caplog.at_level(logging.WARNING, "imgclf.profiler"):
        assert run(env) == 0
    assert "profiler and rules stopped (training goes on): ZeroDivisionError: a bug in a rule" in caplog.text
    assert (env.model_dir / "model.pt").is_file()


def settings(tmp_path, hps=None, profiler_config=None):
    config_dir = tmp_path / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    if profiler_config is not None:
        (config_dir / "profilerconfig.json").write_text(json.dumps(profiler_config))
    env = Namespace(output_data_dir=tmp_path / "out", config_dir=config_dir)
    return monitor.MonitorSettings.from_job(parse_hyperparameters(hps or {}), env)


def test_profilerconfig_json_sets_interval_and_trace_window(tmp_path):
    sagemaker = {"ProfilingParameters": {"ProfilingIntervalInMilliseconds": 200, "LocalPath": "/opt/ml/output/profiler",
                                         "DetailedProfilingConfig": '{"StartStep": 5, "NumSteps": 3}'}}
    s = settings(tmp_path, profiler_config=sagemaker)
    assert (s.interval_ms, s.trace_steps) == (200, (6, 8))  # Debugger counts steps from 0, the job from 1
    s = settings(tmp_path, {"profiler-interval-ms": "1000", "profiler-trace-steps": "2-4"}, profiler_config=sagemaker)
    assert (s.interval_ms, s.trace_steps) == (1000, (2, 4))  # hyperparameters win
    s = settings(tmp_path, {"profiler-interval-ms": "500"}, profiler_config=sagemaker)
    assert s.interval_ms == 500  # given explicitly, the default's value still wins over the file
    plain = settings(tmp_path / "no-file")
    assert (plain.interval_ms, plain.trace_steps) == (PROFILER_INTERVAL_MS, None)


@pytest.mark.parametrize("hps, message", [
    ({"profiler-trace-steps": "5-2"}, "profiler-trace-steps='5-2'"),
    ({"profiler-trace-steps": "steps"}, "FIRST-LAST"),
    ({"profiler-interval-ms": "10"}, r"profiler-interval-ms=10 is out of range \[50, inf\)"),
])
def test_bad_profiler_hyperparameters(tmp_path, hps, message):
    with pytest.raises(UserError, match=message):
        settings(tmp_path, hps)
