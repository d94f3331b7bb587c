"""A user's mistake on every command line: one line on stderr that names the fix, exit status 2, no
traceback unless asked for; flag prefixes refused. AWS configuration cleared: nothing reaches AWS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from imgclf.commandline import USER_ERROR_EXIT, VERBOSE_ENV
from imgclf.debug import report
from imgclf.hpo import cli as tune_cli
from imgclf.launch import cli
from imgclf.names import UserError
from imgclf.serve import server
from imgclf.train import export_cli, hyperparameters

ROLE = "arn:aws:iam::123456789012:role/imgclf"
S3_DATA = "s3://bucket/dogs"


@pytest.fixture(autouse=True)
def no_aws(monkeypatch, tmp_path):
    """No AWS configuration at all: no region, no credentials, no instance metadata."""
    for var in list(os.environ):
        if var.startswith(("AWS_", "SAGEMAKER_", "IMGCLF_", "SM_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.chdir(tmp_path)


def one_line_error(capsys, run, *args) -> str:
    """The stderr line of `run(*args)`, after checking the exit status and that it is the only line."""
    with pytest.raises(SystemExit) as exit_:
        run(*args)
    err = capsys.readouterr().err
    assert exit_.value.code == USER_ERROR_EXIT, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def with_data(tmp_path: Path) -> str:
    (tmp_path / "dogs" / "train").mkdir(parents=True)
    return str(tmp_path / "dogs")


# command line -> what the one line must say (the fix it names)
LAUNCHER_CASES = {
    "train --epoch 3": "imgclf train: error: unrecognized arguments: --epoch 3 (see imgclf train --help)",
    f"train --data {S3_DATA} --image-uri img --role {ROLE}": "no AWS region: give --region, set $AWS_REGION",
    f"train --data {S3_DATA} --image-uri img --lr fast": "bad hyperparameter: argument --lr: invalid float value: 'fast'",
    f"train --data {S3_DATA} --image-uri img --epochs 0": "bad hyperparameter: epochs=0 is out of range [1, inf)",
    f"train --data {S3_DATA} --image-uri img --arch resnet": "argument --arch: invalid choice: 'resnet'",
    f"train --data {S3_DATA}": "no image: give --image-uri or set $IMGCLF_IMAGE_URI",
    f"train --data {S3_DATA} --image-uri img --best missing.json": "no best-trial file missing.json",
    f"train --data {S3_DATA} --image-uri img --features": "argument --features: expected one argument",
    "deploy --local --image-uri img --model-data MISSING": "no file MISSING: give --model-data the model.tar.gz",
    "deploy --local --image-uri img --training-job job": "give --model-data, the model.tar.gz",
    "tune --local --best tuning-job": "--best reads a SageMaker tuning job",
    "data pack MISSING out": "no folder MISSING: give pack a folder of class folders",
    "data check MISSING": "no train/ folder in MISSING",
    "data upload MISSING": "data upload needs an S3 URI: imgclf data upload DIR s3://bucket/prefix",
    "data check . --role=x": "imgclf data: error: unrecognized arguments: --role=x",
    "train --instance-count two": "argument --instance-count: invalid int value: 'two'",
    f"transform --image-uri img --model-data {S3_DATA}/model.tar.gz --data {S3_DATA} --accept text/csv":
        "argument --accept: invalid choice: 'text/csv' (choose from 'application/json', 'application/json;verbose')",
}


@pytest.mark.parametrize("command, answer", LAUNCHER_CASES.items(), ids=list(LAUNCHER_CASES))
def test_the_launcher_answers_a_mistake_in_one_line(capsys, command, answer):
    line = one_line_error(capsys, cli.main, command.split())
    assert answer in line and line.startswith("imgclf")


def test_local_mode_without_docker_says_so_before_the_sdk_runs(capsys, monkeypatch, tmp_path):
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker, no docker-compose
    line = one_line_error(capsys, cli.main, ["deploy", "--local", "--image-uri", "img", "--model-data", str(model)])
    assert line == "imgclf: error: local mode needs docker: install it, or drop --local to run on SageMaker"


def test_verbose_adds_the_traceback(capsys, monkeypatch):
    command = ["train", "--data", S3_DATA, "--image-uri", "img", "--role", ROLE]
    with pytest.raises(SystemExit):
        cli.main([*command, "--verbose"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("imgclf: error: no AWS region")
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with pytest.raises(SystemExit):
        cli.main(command)
    assert "Traceback" in capsys.readouterr().err


def test_both_features_hyperparameters_reach_the_launcher(tmp_path):
    args = cli.get_args_parser().parse_args(["train", "--features", "true", "--extract-features", "false",
                                             "--features-data", "s3://bucket/features/model.tar.gz"])
    from imgclf.launch import options

    assert options.job_hyperparameters(args) == {"features": True, "extract-features": "false"}


def test_the_local_tuner_answers_in_one_line(capsys, image_folders):
    assert "no train/ folder in MISSING" in one_line_error(capsys, tune_cli.main, ["--data", "MISSING"])
    line = one_line_error(capsys, tune_cli.main, ["--data", str(image_folders), "--momentum", "2"])
    assert line.startswith("imgclf-tune: error: bad hyperparameter: momentum=2.0 is out of range [0, 1]")
    line = one_line_error(capsys, tune_cli.main, ["--data", str(image_folders), "--trial", "3"])
    assert "unrecognized arguments: --trial 3" in line


def test_the_server_answers_in_one_line(capsys, monkeypatch, tmp_path):
    line = one_line_error(capsys, server.cli, ["--model-dir", str(tmp_path / "nothing")])
    assert line == f"imgclf-serve: error: no model artifact in {tmp_path / 'nothing'}: give --model-dir or set $SM_MODEL_DIR"
    assert "argument --workers: invalid int value: 'x'" in one_line_error(capsys, server.cli, ["--workers", "x"])
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "many")
    assert "SAGEMAKER_MODEL_SERVER_WORKERS='many' is not an integer" in one_line_error(capsys, server.cli, [])


def test_report_and_export_answer_in_one_line(capsys, tmp_path):
    assert "cannot read MISSING" in one_line_error(capsys, report.cli, ["MISSING"])
    (tmp_path / "empty").mkdir()
    assert "no profile-*.json under" in one_line_error(capsys, report.cli, [str(tmp_path / "empty")])
    line = one_line_error(capsys, export_cli.cli, [str(tmp_path / "empty")])
    assert line.startswith("imgclf-export: error: cannot export") and "not a model artifact" in line


# ---------------------------------------------------------------------------------------------
# programs in their own process: the training job, a missing extra, the shell scripts


def run(args: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SM_", "SAGEMAKER_", "IMGCLF_"))}
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env={**clean, **(env or {})}, cwd=cwd)


@pytest.mark.parametrize("argv, answer", [
    ([], "ClientError: no training channel: give images in class folders as the 'training' channel"),
    (["--lr", "fast"], "ClientError: bad hyperparameter: argument --lr: invalid float value: 'fast'"),
])
def test_a_training_job_that_never_started_fails_in_one_line_without_a_report(tmp_path, argv, answer):
    proc = run([sys.executable, "-m", "imgclf.train.job", "--profiler", "true", *argv],
               env={"SAGEMAKER_BASE_DIR": str(tmp_path / "ml")})
    out = proc.stdout + proc.stderr
    assert proc.returncode == USER_ERROR_EXIT, out
    assert "Traceback" not in out and [line for line in out.splitlines() if answer in line], out
    assert (tmp_path / "ml" / "output" / "failure").read_text().startswith(answer)  # what SageMaker reads
    assert [p.name for p in (tmp_path / "ml").rglob("*") if p.is_file()] == ["failure"]  # no profiler report


@pytest.mark.parametrize("program, module, extra, argv", [
    ("tuner", "optuna", "tune", ["--help"]),
    ("server", "sagemaker_inference", "serve", ["--help"]),
    ("launcher", "sagemaker", "launch", ["train", "--data", S3_DATA, "--image-uri", "img"]),  # its --help needs none
])
def test_a_missing_extra_names_its_pip_install(program, module, extra, argv):
    code = (f"import sys; sys.modules[{module!r}] = None; sys.argv[1:] = {argv!r}\n"
            f"from imgclf.commandline import {program}; {program}()")
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == USER_ERROR_EXIT and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.strip().endswith(f"error: {module} is not installed: pip install 'imgclf[{extra}]'")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, answer", [
    (["--regoin", "us-east-1"], "unknown option --regoin (see ./build_and_push.sh --help)"),
    (["--region"], "--region needs a value (see ./build_and_push.sh --help)"),
    (["a", "b", "c"], "too many arguments: a b c: give at most IMAGE_NAME and TAG"),
])
def test_build_and_push_answers_in_one_line(argv, answer):
    proc = run(["bash", str(ROOT / "build_and_push.sh"), *argv])
    assert proc.returncode == USER_ERROR_EXIT and proc.stderr.strip() == f"build_and_push.sh: error: {answer}"


def test_predict_sh_answers_in_one_line(tmp_path):
    proc = run(["bash", str(ROOT / "local_test" / "predict.sh"), "missing.jpg"], cwd=tmp_path)
    assert proc.returncode == USER_ERROR_EXIT
    assert proc.stderr.strip() == "predict.sh: error: no file missing.jpg: give an image file"


# ---------------------------------------------------------------------------------------------
# no parser takes a prefix of a flag for the flag

def test_every_launcher_command_refuses_a_flag_prefix(capsys):
    for name, parser in cli.get_args_parser().commands.items():
        assert parser.allow_abbrev is False, name  # argparse then leaves `--model-dat` over instead of taking it
    line = one_line_error(capsys, cli.main, ["deploy", "--model-dat", "m.tar.gz"])
    assert line == "imgclf deploy: error: unrecognized arguments: --model-dat m.tar.gz (see imgclf deploy --help)"


@pytest.mark.parametrize("run_cli, argv, prefix", [
    (tune_cli.main, ["--data", ".", "--trial", "3"], "--trial"),
    (server.cli, ["--work", "2"], "--work"),
    (report.cli, [".", "--ou", "x"], "--ou"),
    (export_cli.cli, [".", "--dat", "x"], "--dat"),
    (cli.main, ["--hel", "data", "check", "."], "--hel"),
])
def test_every_program_refuses_a_flag_prefix(capsys, run_cli, argv, prefix):
    assert f"unrecognized arguments: {prefix}" in one_line_error(capsys, run_cli, argv)


def test_the_training_job_refuses_a_hyperparameter_prefix():
    with pytest.raises(UserError, match="unrecognized arguments: --epoch 3"):
        hyperparameters.parse({}, ["--epoch", "3"])
    with pytest.raises(UserError, match="unknown hyperparameters: epoch"):
        hyperparameters.parse({"epoch": "3"})


# ---------------------------------------------------------------------------------------------
# help: every flag states its default, no source file named


def all_parsers():
    import argparse

    top = cli.get_args_parser()
    yield "imgclf", top
    yield from ((f"imgclf {n}", p) for n, p in top.commands.items())
    yield "imgclf-tune", tune_cli.get_args_parser()
    yield "imgclf-serve", server.get_args_parser()
    yield "imgclf-export", export_cli.get_args_parser()
    yield "imgclf-train", hyperparameters.get_args_parser()
    assert isinstance(top, argparse.ArgumentParser)


def test_every_flag_states_its_default_and_no_help_names_a_source_file():
    import re

    for name, parser in all_parsers():
        for action in parser._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                assert action.help and "default" in action.help, (name, action.option_strings)
        assert not re.search(r"\b\w+\.py\b", parser.format_help()), name


def test_the_training_jobs_help_states_each_default_once():
    text = hyperparameters.get_args_parser().format_help()
    assert "below" not in text
    for flag in ("--lr", "--label-smoothing", "--epochs"):
        block = text.split(f"  {flag} ")[1].split("\n  --")[0]
        assert block.count("default") == 1, block


def test_the_data_command_lists_its_own_flags_only():
    text = cli.get_args_parser().commands["data"].format_help()
    for other in ("--role", "--local-root", "--serving-port", "--local-gpu", "--image-uri"):
        assert other not in text


def test_instance_type_states_its_gpu_default():
    from imgclf.launch.options import TRAINING_INSTANCE_TYPE

    text = cli.get_args_parser().commands["train"].format_help()
    assert f"(default: {TRAINING_INSTANCE_TYPE}, a GPU" in " ".join(text.split())


def test_best_trial_json_is_read_before_aws(capsys, tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"hyperparameters": {"lr": "0.05", "momentum": "7"}}))
    line = one_line_error(capsys, cli.main, ["train", "--data", S3_DATA, "--image-uri", "img", "--best", str(best)])
    assert "bad hyperparameter: momentum=7.0 is out of range [0, 1]" in line
